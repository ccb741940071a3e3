-- bury.lua for a fair queue (gate.lua is put in front): move messages a consumer
-- holds to the dead-letter stream, with the reason, freeing their places.
-- KEYS[1]: the stream   KEYS[2]: the dead-letter stream
-- ARGV: group, consumer, queue, base, window, cap, rate, burst, {entry_id, reason, error}...
-- Fenced: only entries still pending for `consumer` move. The dead letter keeps
-- the group (field `g`), so `fastq dlq requeue` sends it back through the gate.
-- Returns the number moved.
local group, consumer, queue = ARGV[1], ARGV[2], ARGV[3]
gate_init(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
local moved = 0
for i = 9, #ARGV, 3 do
  local id, reason, err = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #p == 1 and p[1][2] == consumer then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    redis.call('XACK', KEYS[1], group, id)
    redis.call('XDEL', KEYS[1], id)
    if #e == 1 then
      local f = e[1][2]
      local dc = 0
      for j = 3, #f, 2 do
        if f[j] == 'dc' then dc = tonumber(f[j + 1]) end
      end
      g_bury(KEYS[2], f, reason, err, queue, dc, g_field(f), true)
      moved = moved + 1
    end
  end
end
g_admit()
return moved
