-- Trailing-edge debounce: a send replaces the pending message of its debounce
-- key (if it is still waiting in the delayed set) and pushes the due time back.
-- KEYS[1]: the debounce record (a hash: id, due, off)   KEYS[2]: the delayed set
-- ARGV: task_id, due ('+<ms>' after Redis's TIME: g_due, gate.lua is put in
--       front), member, id_offset, record_ttl_ms
-- A member is <field byte><priority digit><payload>; the task id is the bytes
-- id_offset+1 .. id_offset+#task_id of the member. When a message of the key is
-- still pending, the new member takes over its id (same length: fastq makes
-- both), so every send of one window answers with the one run's id. Found by
-- its exact score, so the lookup never scans the set; a member that was
-- promoted (or retried, or deferred) is not found and a new window starts.
-- Returns the task id of the pending run.
local due = g_due(ARGV[2])
local rec = redis.call('HMGET', KEYS[1], 'id', 'due', 'off')
local id, member, off = ARGV[1], ARGV[3], tonumber(ARGV[4])
local old, old_due, old_off = rec[1], rec[2], tonumber(rec[3])
if old and old_due and old_off and #old == #id then
  local found = redis.call('ZRANGEBYSCORE', KEYS[2], old_due, old_due)
  for _, m in ipairs(found) do
    if string.sub(m, old_off + 1, old_off + #old) == old then
      redis.call('ZREM', KEYS[2], m)
      id = old
      member = string.sub(member, 1, off) .. old .. string.sub(member, off + #old + 1)
      break
    end
  end
end
redis.call('ZADD', KEYS[2], due, member)
redis.call('HSET', KEYS[1], 'id', id, 'due', due, 'off', off)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return id
