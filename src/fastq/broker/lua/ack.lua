-- Acknowledge finished messages: drop them from the pending list and the stream.
-- KEYS[1]: the stream   ARGV: group, entry_id...
-- XACK only removes ids still pending in this group: an entry the reaper already
-- moved elsewhere got a new id, so a late ack from a cut-off worker touches
-- nothing (natural fencing).
local group = ARGV[1]
local acked = 0
for i = 2, #ARGV, 4000 do
  local last = math.min(i + 3999, #ARGV)
  acked = acked + redis.call('XACK', KEYS[1], group, unpack(ARGV, i, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, last))
end
return acked
