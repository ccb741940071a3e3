-- Take or keep beat leadership (fastq beat: exactly one leader at a time).
-- KEYS[1]: the leader lock   ARGV: candidate id, TTL ms
-- Returns {status, server seconds, server microseconds}; status 2: taken now,
-- 1: renewed (the caller already led), 0: another beat leads.
-- The server time lets every beat use one clock for due times.
local t = redis.call('TIME')
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, t[1], t[2]}
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, t[1], t[2]}
end
return {0, t[1], t[2]}
