-- Replace a message a consumer holds with another delivery of it, atomically:
-- its next try (retries), or the same message later (waiting for rate-limit tokens).
-- KEYS[1]: the stream   KEYS[2]: the delayed set   KEYS[3]: the target stream
-- ARGV: group, consumer, entry_id, due_ms (0 = now), member_or_field, payload
-- With a due time the new try waits in the delayed set (member = ARGV[5]);
-- without one it goes straight to the target stream (field ARGV[5], body ARGV[6]).
-- Fenced: nothing happens unless the entry is still pending for `consumer`,
-- so a task is never both retried and redelivered. Returns 1 when done.
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #p ~= 1 or p[1][2] ~= consumer then return 0 end
redis.call('XACK', KEYS[1], group, id)
redis.call('XDEL', KEYS[1], id)
local due = tonumber(ARGV[4])
if due > 0 then
  redis.call('ZADD', KEYS[2], due, ARGV[5])
else
  redis.call('XADD', KEYS[3], '*', ARGV[5], ARGV[6])
end
return 1
