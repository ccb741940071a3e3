-- Claim tokens from a cluster-wide token bucket (one per rate-limited task or queue).
-- KEYS[1]: the bucket (HASH: tokens, ts, and `rate` when changed at run time)
-- ARGV: rate (tokens/s, used unless the bucket holds an override), capacity, wanted
-- Tokens refill continuously at `rate` up to `capacity`; Redis server time is used,
-- so workers' clocks do not matter. Workers claim a few tokens at a time, so a
-- limit costs far less than one round trip per task.
-- Returns {granted, wait_ms (until one more token), rate in use as a string}.
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate')
local rate = tonumber(b[3]) or tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens, ts = capacity, now
end
if rate > 0 then
  tokens = math.min(capacity, tokens + (now - ts) * rate / 1000)
end
local granted = math.min(want, math.floor(tokens))
if granted < 0 then granted = 0 end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 3600000)
local wait = 0
if tokens < 1 then
  if rate > 0 then wait = math.ceil((1 - tokens) * 1000 / rate) else wait = 1000 end
end
return {granted, wait, tostring(rate)}
