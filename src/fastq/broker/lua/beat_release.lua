-- Give up beat leadership on a clean stop, so a standby takes over at once.
-- KEYS[1]: the leader lock   ARGV[1]: our id. Deletes only our own lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
