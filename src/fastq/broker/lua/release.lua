-- Hand back messages a consumer took but did not finish (warm shutdown, a pool
-- child that died), to the queue's "returned" stream, which every consumer reads
-- before the priority streams: they run next, on any worker.
-- KEYS[1]: the stream they came from   KEYS[2]: the returned stream
-- KEYS[3]: the dead-letter stream
-- ARGV: group, consumer, strike_id, max_deliveries, queue, entry_id...
-- Only entries still pending for `consumer` move (fenced). The entry equal to
-- strike_id (the one a dead child was running) gets its delivery count raised,
-- and is dead-lettered once that reaches max_deliveries; the others keep
-- theirs: giving work back is not a failure.
-- Returns {moved, dead_lettered}.
local group, consumer, strike = ARGV[1], ARGV[2], ARGV[3]
local max_dc, queue = tonumber(ARGV[4]), ARGV[5]
local moved, buried = 0, 0
for i = 6, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #p == 1 and p[1][2] == consumer then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    redis.call('XACK', KEYS[1], group, id)
    redis.call('XDEL', KEYS[1], id)
    if #e == 1 then
      local f = e[1][2]
      local dc, src = 0, KEYS[1]
      for j = 3, #f, 2 do
        if f[j] == 'dc' then dc = tonumber(f[j + 1]) end
        if f[j] == 'src' then src = f[j + 1] end
      end
      if id == strike then dc = dc + 1 end
      if dc >= max_dc then
        redis.call('XADD', KEYS[3], '*', f[1], f[2], 'reason', 'max_deliveries',
                   'error', 'delivered ' .. dc .. ' times without finishing (worker process died)',
                   'queue', queue, 'dc', dc)
        buried = buried + 1
      else
        redis.call('XADD', KEYS[2], '*', f[1], f[2], 'dc', dc, 'src', src)
        moved = moved + 1
      end
    end
  end
end
return {moved, buried}
