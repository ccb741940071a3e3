-- Renew the leases of everything some consumers hold (prefetched or running).
-- A lease is the entry's idle time in the pending list; XCLAIM to the same owner
-- with JUSTID resets it without touching the delivery counter.
-- KEYS: the streams of one queue   ARGV: group, min_idle_ms, consumer...
-- Only entries the consumer still owns are touched: one the reaper already
-- moved is not stolen back. Returns the number of leases renewed.
local group, min_idle = ARGV[1], tonumber(ARGV[2])
local renewed = 0
for _, key in ipairs(KEYS) do
  for c = 3, #ARGV do
    local consumer = ARGV[c]
    local pend = redis.call('XPENDING', key, group, 'IDLE', min_idle, '-', '+', 10000, consumer)
    if #pend > 0 then
      local ids = {}
      for _, p in ipairs(pend) do ids[#ids + 1] = p[1] end
      for i = 1, #ids, 4000 do
        local last = math.min(i + 3999, #ids)
        local args = {key, group, consumer, 0}
        for j = i, last do args[#args + 1] = ids[j] end
        args[#args + 1] = 'JUSTID'
        redis.call('XCLAIM', unpack(args))
        renewed = renewed + (last - i + 1)
      end
    end
  end
end
return renewed
