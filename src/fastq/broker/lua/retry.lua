-- Replace a message a consumer holds with another delivery of it, atomically:
-- its next try (retries), or the same message later (waiting for rate-limit tokens).
-- KEYS[1]: the stream   KEYS[2]: the delayed set   KEYS[3]: the target stream
-- ARGV: group, consumer, entry_id, due ('0' = now, '+<ms>' after Redis's TIME,
--       '<ms>' epoch: g_due in gate.lua), member_or_field, payload,
--       then the gate of a fair queue (base, window, cap, rate, burst; five
--       empty strings for a plain queue)
-- With a due time the new try waits in the delayed set (member = ARGV[5]);
-- without one it goes straight to the target stream (field ARGV[5], body ARGV[6]).
-- On a fair queue the message keeps its group (gate.lua is put in front): a
-- delivery later leaves the streams, frees its place and comes back through the
-- gate when due (its delayed-set member carries the group); a delivery now stays
-- in the streams and keeps its place.
-- Fenced: nothing happens unless the entry is still pending for `consumer`,
-- so a task is never both retried and redelivered. Returns 1 when done.
local group, consumer, id = ARGV[1], ARGV[2], ARGV[3]
local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #p ~= 1 or p[1][2] ~= consumer then return 0 end
local grp = nil
if ARGV[7] ~= '' then
  gate_init(ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e == 1 then grp = g_field(e[1][2]) end
end
redis.call('XACK', KEYS[1], group, id)
redis.call('XDEL', KEYS[1], id)
local due = g_due(ARGV[4])
if due > 0 then
  if grp then
    redis.call('ZADD', KEYS[2], due, g_member(grp, ARGV[5]))
    g_leave(grp, 1)
    g_admit()
  else
    redis.call('ZADD', KEYS[2], due, ARGV[5])
  end
elseif grp then
  redis.call('XADD', KEYS[3], '*', ARGV[5], ARGV[6], 'g', grp)
else
  redis.call('XADD', KEYS[3], '*', ARGV[5], ARGV[6])
end
return 1
