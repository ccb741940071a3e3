-- Send a message unless one with the same unique key is waiting or running.
-- KEYS[1]: the unique lock   KEYS[2]: the target: a priority stream, or the delayed set
-- ARGV: task_id, lock_ttl_ms, due ('0' = now, '+<ms>' after Redis's TIME, '<ms>'
--       epoch: g_due, gate.lua is put in front), member_or_field, payload,
--       and for a fair queue: base, window, cap, rate, burst, group
-- On a fair queue a message due now enters through the gate (g_enter: ARGV[4] is
-- then the gate's item: field byte, priority digit, payload) and a delayed one
-- carries its group in its member (broker.fair.delayed_member).
-- With a due time the message waits in the delayed set (member = ARGV[4]);
-- without one it is appended to the stream (field ARGV[4], body ARGV[5]).
-- The lock holds the id of the task that took it; the worker deletes it when
-- that task finishes (unique_release.lua), or it expires after lock_ttl_ms.
-- Returns the id of the task holding the lock: ARGV[1] when this message was sent.
local holder = redis.call('GET', KEYS[1])
if holder then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local due = g_due(ARGV[3])
if due > 0 then
  redis.call('ZADD', KEYS[2], due, ARGV[4])
elseif ARGV[6] then
  gate_init(ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
  g_enter(ARGV[11], ARGV[4])
  g_admit()
else
  redis.call('XADD', KEYS[2], '*', ARGV[4], ARGV[5])
end
return ARGV[1]
