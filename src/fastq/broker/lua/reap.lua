-- Return the messages of dead consumers to their queue.
-- A consumer whose leases were not renewed for lease_ms is dead (killed, host
-- gone, frozen): its pending entries go back to the tail of the stream they came
-- from with their delivery count raised, or to the dead-letter stream once they
-- have failed max_deliveries deliveries. Each requeued entry gets a new id, so
-- a late ack from the lost consumer cannot touch it.
-- A fair queue's message keeps its group (field `g`) when requeued; a dead
-- letter frees its place in the gate (gate.lua is put in front of this script).
-- KEYS[1]: lock   KEYS[2]: dead-letter stream   KEYS[3..]: the queue's streams
-- ARGV: group, lease_ms, max_deliveries, max_entries, reaper, lock_ms, queue,
--       and for a fair queue: base, window, cap, rate, burst
-- Returns {requeued, dead_lettered, {dead-letter entry id...}} (the ids let the
-- reaper log which tasks it dead-lettered), or -1 when another worker holds the lock.
local group, lease = ARGV[1], tonumber(ARGV[2])
local max_dc, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local reaper, queue = ARGV[5], ARGV[7]
if not redis.call('SET', KEYS[1], reaper, 'NX', 'PX', ARGV[6]) then return -1 end
local gated = ARGV[8] ~= nil
if gated then gate_init(ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]) end
local requeued, buried = 0, 0
local dead_ids = {}
local own = {}
for k = 3, #KEYS do own[KEYS[k]] = true end
for k = 3, #KEYS do
  local key = KEYS[k]
  if redis.call('EXISTS', key) == 1 then
    local cursor = '0-0'
    repeat
      local ok, r = pcall(redis.call, 'XAUTOCLAIM', key, group, reaper, lease, cursor, 'COUNT', 500)
      if not ok then break end
      cursor = r[1]
      for _, e in ipairs(r[2]) do
        local id, f = e[1], e[2]
        redis.call('XACK', key, group, id)
        redis.call('XDEL', key, id)
        if f then
          local dc, src, grp, bad = 1, nil, nil, nil
          for j = 3, #f, 2 do
            if f[j] == 'dc' then
              dc = g_dc(f[j + 1])
              if dc == nil then dc, bad = 0, f[j + 1] end
              dc = dc + 1
            end
            -- only back to one of this queue's own streams (src is read from the entry)
            if f[j] == 'src' and own[f[j + 1]] then src = f[j + 1] end
            if f[j] == 'g' then grp = f[j + 1] end
          end
          if bad then
            dead_ids[#dead_ids + 1] = g_bury(KEYS[2], f, 'malformed', g_bad_dc(bad), queue, 0, grp, gated)
            buried = buried + 1
          elseif dc >= max_dc then
            local err = 'delivered ' .. dc .. ' times without finishing (worker lost)'
            dead_ids[#dead_ids + 1] = g_bury(KEYS[2], f, 'max_deliveries', err, queue, dc, grp, gated)
            buried = buried + 1
          else
            local target = key
            if src then target = src end
            if grp then
              redis.call('XADD', target, '*', f[1], f[2], 'dc', dc, 'g', grp)
            else
              redis.call('XADD', target, '*', f[1], f[2], 'dc', dc)
            end
            requeued = requeued + 1
          end
        end
      end
      -- entries whose body was deleted: XAUTOCLAIM already dropped them from the PEL
      budget = budget - #r[2]
    until cursor == '0-0' or budget <= 0
    -- Forget consumers that hold nothing and have been silent for long.
    local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', key, group)
    if ok then
      for _, c in ipairs(consumers) do
        local name, pending, idle
        for j = 1, #c, 2 do
          if c[j] == 'name' then name = c[j + 1]
          elseif c[j] == 'pending' then pending = c[j + 1]
          elseif c[j] == 'idle' then idle = c[j + 1] end
        end
        if pending == 0 and idle > 10 * lease and name ~= reaper then
          redis.call('XGROUP', 'DELCONSUMER', key, group, name)
        end
      end
    end
  end
end
if gated and buried > 0 then g_admit() end
return {requeued, buried, dead_ids}
