-- Append many messages to one stream in one call (bulk sends: map_async, groups).
-- KEYS[1]: the stream   ARGV: field, payload...
-- One reply for the whole batch instead of one per XADD: the client's per-reply
-- parsing was the bulk path's largest cost. Returns the number appended.
local field = ARGV[1]
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', field, ARGV[i])
end
return #ARGV - 1
