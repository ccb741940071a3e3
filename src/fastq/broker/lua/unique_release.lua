-- A unique task finished: free its lock, unless it already expired and another
-- task took it since (fenced by the task id the lock holds).
-- KEYS[1]: the unique lock   ARGV: task_id
-- Returns 1 when the lock was deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
