-- Move due delayed messages (countdown, ETA, retries) to their priority stream.
-- KEYS[1]: the queue's delayed set   KEYS[2..11]: priority streams 0..9
-- ARGV: max messages to move
-- A member is <field byte><priority digit><payload>; its score the due time in ms.
-- Server time is used, so producers' and workers' clocks do not matter.
-- Returns the number moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local prio = tonumber(string.sub(m, 2, 2)) or 0
  redis.call('XADD', KEYS[2 + prio], '*', string.sub(m, 1, 1), string.sub(m, 3))
  redis.call('ZREM', KEYS[1], m)
end
return #due
