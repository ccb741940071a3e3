-- Acknowledge finished messages of a fair queue (ack.lua plus the gate; gate.lua
-- is put in front): drop them from the pending list and the stream, free their
-- places (under a group cap, the place of each one's group: stream field `g`) and
-- admit backlog messages, the groups taking turns.
-- KEYS[1]: the stream   ARGV: group, base, window, cap, rate, burst, entry_id...
-- Fencing as in ack.lua: an entry the reaper already moved has a new id, so a
-- late ack from a cut-off worker finds nothing and changes no count.
local group = ARGV[1]
gate_init(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local acked = 0
local left, order = {}, {}
for i = 7, #ARGV do
  if G_cap == 0 then break end  -- without a cap only the window counts (XLEN): no need to read
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e == 1 then
    local grp = g_field(e[1][2])
    if grp then
      if not left[grp] then
        left[grp] = 0
        order[#order + 1] = grp
      end
      left[grp] = left[grp] + 1
    end
  end
end
for i = 7, #ARGV, 4000 do
  local last = math.min(i + 3999, #ARGV)
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(ARGV, i, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, last))
end
for _, grp in ipairs(order) do g_leave(grp, left[grp]) end
g_admit()
return acked
