-- Move messages a consumer holds to the dead-letter stream, with the reason.
-- KEYS[1]: the stream   KEYS[2]: the dead-letter stream
-- ARGV: group, consumer, queue, then the gate of a fair queue (base, window,
--       cap, rate, burst; five empty strings for a plain queue), then
--       {entry_id, reason, error}...
-- Fenced: only entries still pending for `consumer` move. A fair queue's dead
-- letter keeps its group (field `g`), so `fastq dlq requeue` sends it back
-- through the gate, and frees its place (gate.lua is put in front).
-- Returns the number moved.
local group, consumer, queue = ARGV[1], ARGV[2], ARGV[3]
local gated = ARGV[4] ~= ''
if gated then gate_init(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]) end
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
        if f[j] == 'dc' then dc = g_dc(f[j + 1]) or 0 end
      end
      g_bury(KEYS[2], f, reason, err, queue, dc, g_field(f), gated)
      moved = moved + 1
    end
  end
end
if gated and moved > 0 then g_admit() end
return moved
