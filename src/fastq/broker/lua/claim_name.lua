-- Claim a worker name: write the claimer's heartbeat into the name's registry
-- key only if the key still holds what the claimer judged (compare-and-set), so
-- two workers starting at once never both take a name.
-- KEYS[1]: the registry key (fastq:worker:<name>)
-- ARGV[1]: the value read ('' when the key was absent), ARGV[2]: the new value,
-- ARGV[3]: its TTL in seconds
-- Returns 1 when claimed, 0 when the key changed meanwhile.
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
