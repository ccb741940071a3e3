-- Move due delayed messages (countdown, ETA, retries) to their priority stream.
-- KEYS[1]: the queue's delayed set   KEYS[2..11]: priority streams 0..9
-- KEYS[12]: the dead-letter stream
-- ARGV: max messages to move, the queue's name
-- A member is <field byte><priority digit><payload>; its score the due time in ms.
-- Server time is used, so producers' and workers' clocks do not matter.
-- A fair queue's member ('g', field, priority, <n>:<group>, payload) is promoted
-- by fair_promote.lua; one that reaches this script (a worker without the fair
-- settings) goes to its stream without its group, uncounted, rather than be lost.
-- A member that is neither (written by something else) is dead-lettered, so it
-- cannot stop every countdown of the queue (gate.lua is put in front for g_split).
-- Returns the number moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local body = m
  if string.byte(m, 1) == 103 then  -- 'g'
    local _, item = g_split(m)
    body = item
  elseif not g_item_ok(m) then
    body = nil
  end
  if body then
    local prio = tonumber(string.sub(body, 2, 2))
    redis.call('XADD', KEYS[2 + prio], '*', string.sub(body, 1, 1), string.sub(body, 3))
  else
    g_bury_member(KEYS[12], m, ARGV[2])
  end
  redis.call('ZREM', KEYS[1], m)
end
return #due
