-- Fetch up to N messages for one consumer from one queue, highest priority first.
-- KEYS: the queue's streams in the order they are served: for each priority from
--       9 down to 0, its "returned" stream (messages of that priority handed back
--       unstarted: a warm shutdown, a dead pool child, a consumer that held them
--       behind a long task), then its own stream. All share the queue's hash tag
--       (one slot).
-- ARGV: group, consumer, count
-- Returns: { {key_index, {{entry_id, {field, value, ...}}, ...}}, ... }
-- XREADGROUP records every entry in the group's pending list (PEL) in the same
-- step, so nothing is ever popped without being recorded as in flight.
local group, consumer = ARGV[1], ARGV[2]
local want = tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  if want <= 0 then break end
  if redis.call('XLEN', key) > 0 then
    local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer,
                            'COUNT', want, 'STREAMS', key, '>')
    if not ok then
      -- The group vanished (stream deleted and re-created by a producer):
      -- re-create it from the start so nothing already queued is skipped.
      redis.call('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
      reply = redis.call('XREADGROUP', 'GROUP', group, consumer,
                         'COUNT', want, 'STREAMS', key, '>')
    end
    if reply then
      local entries = reply[1][2]
      if #entries > 0 then
        out[#out + 1] = {i, entries}
        want = want - #entries
      end
    end
  end
end
return out
