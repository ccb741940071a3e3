-- Seal a chord whose header was a generator: its header tasks went out as the
-- generator yielded them, under a size too large to complete (chord_open with
-- no size); now that the generator is spent, the size is known.
-- KEYS[1]: the chord's state hash (see chord_done.lua)
-- KEYS[2]: the chord's results hash: header index -> encoded result
-- ARGV: the number of header tasks sent, the unsealed size chord_open stored,
--       ttl (seconds)
-- Header tasks added while unsealed (Task.add_to_chord raised n) still count.
-- Returns:
--   {1, body, results}  every header task had finished already: this call
--                       completed the chord, the caller sends the body
--   {0}                 not yet (the last header task completes it), or the
--                       chord already failed (its header task failed it)
--   {-1}                unknown chord (expired)
local meta, res = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'n', 'state')
local n = tonumber(m[1])
if not n then return {-1} end
n = tonumber(ARGV[1]) + (n - tonumber(ARGV[2]))
redis.call('HSET', meta, 'n', n)
if m[2] ~= 'open' or redis.call('HLEN', res) < n then return {0} end
redis.call('HSET', meta, 'state', 'done', 'by', 'seal')
local out = {}
for i = 0, n - 1 do
  out[i + 1] = redis.call('HGET', res, tostring(i)) or ''
end
redis.call('EXPIRE', res, tonumber(ARGV[3]))
return {1, redis.call('HGET', meta, 'body'), out}
