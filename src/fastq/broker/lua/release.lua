-- Hand back messages a consumer took but did not finish (warm shutdown, a pool
-- child that died, a consumer holding them behind a long task), to the
-- "returned" stream of their priority, which every consumer reads before that
-- priority's stream: they run next, on any worker, after higher priorities.
-- KEYS[1]: the stream they came from   KEYS[2]: the returned stream of its priority
-- KEYS[3]: the dead-letter stream
-- ARGV: group, consumer, strike_id, max_deliveries, queue, then the gate of a
--       fair queue (base, window, cap, rate, burst; five empty strings for a plain
--       queue), then entry_id...
-- Only entries still pending for `consumer` move (fenced). The entry equal to
-- strike_id (the one a dead child was running; '*': every entry, for a child
-- that ran many at once) gets its delivery count raised, and is dead-lettered
-- once that reaches max_deliveries; the others keep theirs: giving work back is
-- not a failure. A fair queue's message keeps its
-- group (field `g`); a dead letter frees its place (gate.lua is put in front).
-- Returns {moved, dead_lettered}.
local group, consumer, strike = ARGV[1], ARGV[2], ARGV[3]
local max_dc, queue = tonumber(ARGV[4]), ARGV[5]
local gated = ARGV[6] ~= ''
if gated then gate_init(ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]) end
local moved, buried = 0, 0
for i = 11, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #p == 1 and p[1][2] == consumer then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    redis.call('XACK', KEYS[1], group, id)
    redis.call('XDEL', KEYS[1], id)
    if #e == 1 then
      local f = e[1][2]
      local dc, src, grp, bad = 0, KEYS[1], nil, nil
      for j = 3, #f, 2 do
        if f[j] == 'dc' then
          dc = g_dc(f[j + 1])
          if dc == nil then dc, bad = 0, f[j + 1] end
        end
        if f[j] == 'src' then src = f[j + 1] end
        if f[j] == 'g' then grp = f[j + 1] end
      end
      if id == strike or strike == '*' then dc = dc + 1 end
      if bad then
        g_bury(KEYS[3], f, 'malformed', g_bad_dc(bad), queue, 0, grp, gated)
        buried = buried + 1
      elseif dc >= max_dc then
        local err = 'delivered ' .. dc .. ' times without finishing (worker process died)'
        g_bury(KEYS[3], f, 'max_deliveries', err, queue, dc, grp, gated)
        buried = buried + 1
      elseif grp then
        redis.call('XADD', KEYS[2], '*', f[1], f[2], 'dc', dc, 'src', src, 'g', grp)
        moved = moved + 1
      else
        redis.call('XADD', KEYS[2], '*', f[1], f[2], 'dc', dc, 'src', src)
        moved = moved + 1
      end
    end
  end
end
if gated and buried > 0 then g_admit() end
return {moved, buried}
