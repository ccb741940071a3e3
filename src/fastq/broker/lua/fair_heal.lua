-- Check a fair queue's gate against its streams and repair it (gate.lua is put
-- in front). One worker per queue per interval (the lock). The gate can only go
-- wrong by hand-made changes (XTRIM/XDEL of entries, a purge while messages run,
-- deleting some keys) or by processes that treat the queue as a plain one
-- (settings that differ between processes): this puts it right again, so no
-- backlog stays stranded.
-- KEYS[1]: the heal lock
-- ARGV: base, window, cap, rate, burst, holder, lock_ms, max_entries
-- Returns the number of groups whose count or place was wrong, -1 when another
-- worker holds the lock, -2 when the streams hold more than max_entries (not scanned).
if not redis.call('SET', KEYS[1], ARGV[6], 'NX', 'PX', ARGV[7]) then return -1 end
gate_init(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local wrong, fixed = 0, {}
local function fix(grp)
  if not fixed[grp] then
    fixed[grp] = true
    wrong = wrong + 1
  end
end
if G_cap > 0 then
  -- the true per-group counts: stream entries that carry a group
  if g_total() > tonumber(ARGV[8]) then return -2 end
  local streams = {}
  for p = 0, 9 do
    streams[#streams + 1] = g_returned(p)
    streams[#streams + 1] = g_stream(p)
  end
  local counts, order = {}, {}
  for _, key in ipairs(streams) do
    local start = '-'
    while true do
      local rows = redis.call('XRANGE', key, start, '+', 'COUNT', 1000)
      for _, e in ipairs(rows) do
        local grp = g_field(e[2])
        if grp then
          if not counts[grp] then
            counts[grp] = 0
            order[#order + 1] = grp
          end
          counts[grp] = counts[grp] + 1
        end
      end
      if #rows < 1000 then break end
      start = '(' .. rows[#rows][1]
    end
  end
  local old = redis.call('HGETALL', K_count)
  local seen = {}
  for i = 1, #old, 2 do
    seen[old[i]] = true
    if tonumber(old[i + 1]) ~= (counts[old[i]] or 0) then fix(old[i]) end
  end
  for _, grp in ipairs(order) do
    if not seen[grp] then fix(grp) end
  end
  redis.call('DEL', K_count)
  for _, grp in ipairs(order) do redis.call('HSET', K_count, grp, counts[grp]) end
else
  redis.call('DEL', K_count)
end
-- backlogs: forget empty ones, recount their length
local blen = 0
for _, grp in ipairs(redis.call('SMEMBERS', K_keys)) do
  local n = redis.call('LLEN', g_backlog(grp))
  if n == 0 then redis.call('SREM', K_keys, grp) else blen = blen + n end
end
redis.call('SET', K_blen, blen)
-- the ring holds exactly the groups that may be admitted; sleepers have a backlog
for _, grp in ipairs(redis.call('ZRANGE', K_ring, 0, -1)) do
  if redis.call('LLEN', g_backlog(grp)) == 0 or (G_cap > 0 and g_count(grp) >= G_cap)
      or (G_rate > 0 and redis.call('ZSCORE', K_sleep, grp)) then
    redis.call('ZREM', K_ring, grp)
  end
end
for _, grp in ipairs(redis.call('ZRANGE', K_sleep, 0, -1)) do
  if G_rate == 0 or redis.call('LLEN', g_backlog(grp)) == 0 then redis.call('ZREM', K_sleep, grp) end
end
for _, grp in ipairs(redis.call('SMEMBERS', K_keys)) do
  if not redis.call('ZSCORE', K_ring, grp) and not redis.call('ZSCORE', K_sleep, grp) then
    g_ensure(grp)
    if redis.call('ZSCORE', K_ring, grp) then fix(grp) end  -- it was stranded
  end
end
g_admit()
return wrong
