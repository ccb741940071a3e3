-- Record that one header task of a chord finished; say whether this call
-- decided the chord (completed it or failed it).
-- KEYS[1]: the chord's state hash: n (header size), body (the encoded body),
--          state (open | done | failed), by (index that decided it),
--          err (the failure, encoded), sent (set once the decision was acted on)
-- KEYS[2]: the chord's results hash: header index -> encoded result
-- Both keys carry the hash tag {chord-id}: one slot, one atomic step.
-- ARGV: mode ('ok' | 'fail'), header index, value (encoded result, or the
--       encoded error for 'fail'), ttl (seconds), redelivered ('1' when this
--       message was delivered before and that delivery ended without an ack)
-- Idempotent per header index: a header task that runs twice (at-least-once
-- delivery) is counted once (HSETNX), so the chord completes exactly once.
-- Returns:
--   {1, body, results}  this call completed the chord: send the body
--   {2, body, err}      this call failed the chord: fail the body
--   {0}                 nothing to do (counted, or already decided)
--   {-1}                unknown chord (expired, or never set up)
-- A replay by the index that decided the chord, while `sent` is not set, gets
-- the decision again, but only from a redelivered message: the worker that
-- decided died before acting on it. A first delivery of the same index is a
-- second copy of the message (a producer retry) running beside the copy that
-- decided, whose flush is still on its way: it gets {0}, or the body would be
-- sent twice.
local meta, res = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'n', 'state', 'by', 'sent')
local n = tonumber(m[1])
if not n then return {-1} end
local mode, idx, ttl = ARGV[1], ARGV[2], tonumber(ARGV[4])

local function results()
  local out = {}
  for i = 0, n - 1 do
    out[i + 1] = redis.call('HGET', res, tostring(i)) or ''
  end
  return out
end

local state = m[2]
if state == 'open' then
  if mode == 'fail' then
    redis.call('HSET', meta, 'state', 'failed', 'by', idx, 'err', ARGV[3])
    return {2, redis.call('HGET', meta, 'body'), ARGV[3]}
  end
  if redis.call('HSETNX', res, idx, ARGV[3]) == 1 then
    local done = redis.call('HLEN', res)
    if done == 1 then redis.call('EXPIRE', res, ttl) end
    if done < n then return {0} end
    redis.call('HSET', meta, 'state', 'done', 'by', idx)
    return {1, redis.call('HGET', meta, 'body'), results()}
  end
  return {0}
end
if m[3] == idx and not m[4] and ARGV[5] == '1' then
  if state == 'done' then
    return {1, redis.call('HGET', meta, 'body'), results()}
  end
  return {2, redis.call('HGET', meta, 'body'), redis.call('HGET', meta, 'err')}
end
return {0}
