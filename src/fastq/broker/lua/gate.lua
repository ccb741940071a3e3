-- gate.lua: the fair-queue gate (fastq.fairness). Not a script of its own: it is
-- put in front of the scripts that use it (broker/scripts.py, PRELUDES).
--
-- A fair queue keeps at most `window` messages in its streams (ready or in
-- flight: the sum of their XLEN, so this count cannot drift), and with a cap at
-- most `cap` of one group's. The rest wait in their group's backlog list and are
-- admitted as messages leave the streams for good (ack, dead letter, a retry
-- that waits), one turn of the ring of groups at a time: the groups take turns.
-- An admitted message carries its group in the stream field `g`; retries,
-- hand-backs and the reaper keep it.
--
-- Keys, all under the queue's hash tag (base = "<prefix>{<queue>}", one slot):
--   base:gb:<grp>  LIST   the group's backlog; item = field byte, priority digit, payload
--   base:gk        SET    groups with a backlog
--   base:gbn       STRING messages in all backlogs
--   base:gr        ZSET   the ring: groups that may be admitted now, score = turn
--   base:gq        STRING the ring's turn counter
--   base:gc        HASH   with a cap only: group -> its messages in the streams
--   base:gs        ZSET   with a rate only: groups waiting for a token, score = ms when due
--   base:gt:<grp>  HASH   with a rate only: the group's token bucket (tokens, ts)
-- Stream names follow broker/keys.py: base:s (priority 0), base:s1 .. base:s9, and
-- beside each its returned stream base:ret (priority 0), base:ret1 .. base:ret9.
--
-- Invariants (checked and repaired by fair_heal.lua): gc counts exactly the
-- stream entries that carry `g`; a group is in gr iff it has a backlog, is under
-- its cap and is not in gs; gs holds only groups with a backlog.
local G_base, G_window, G_cap, G_rate, G_burst, G_quantum, G_total
local K_count, K_ring, K_seq, K_sleep, K_keys, K_blen

-- cfg: base, window, cap (0 = none), rate (tokens/s, 0 = none), burst (bucket size)
local function gate_init(base, window, cap, rate, burst)
  G_base = base
  G_window, G_cap = tonumber(window), tonumber(cap)
  G_rate, G_burst = tonumber(rate), tonumber(burst)
  -- messages one turn of a group may admit: 1 for small windows (strict turns),
  -- up to 10 for large ones (fewer ring operations per message; B's wait grows by
  -- at most 10 messages per group with a backlog)
  G_quantum = math.max(1, math.min(10, math.floor(G_window / 100)))
  if G_rate > 0 then G_quantum = 1 end
  G_total = nil
  K_count, K_ring, K_seq = base .. ':gc', base .. ':gr', base .. ':gq'
  K_sleep, K_keys, K_blen = base .. ':gs', base .. ':gk', base .. ':gbn'
end

local function g_stream(prio)
  if prio == 0 then return G_base .. ':s' end
  return G_base .. ':s' .. prio
end

local function g_returned(prio)
  if prio == 0 then return G_base .. ':ret' end
  return G_base .. ':ret' .. prio
end

local function g_backlog(grp) return G_base .. ':gb:' .. grp end

local function g_count(grp) return tonumber(redis.call('HGET', K_count, grp)) or 0 end

-- Messages in the queue's streams (ready or in flight). Read once per call, after
-- the caller's deletes; the gate's own adds keep it up to date.
local function g_total()
  if G_total == nil then
    local n = 0
    for p = 0, 9 do n = n + redis.call('XLEN', g_stream(p)) + redis.call('XLEN', g_returned(p)) end
    G_total = n
  end
  return G_total
end

local function g_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A due time as the scripts that file delayed messages take it: '+<ms>' is that
-- long after now on this server's clock (a countdown: producers' and workers'
-- clocks never count), '<ms>' an absolute epoch time (an ETA), '0' now.
local G_time_ms
local function g_due(spec)
  if string.sub(spec, 1, 1) == '+' then
    if not G_time_ms then G_time_ms = g_now() end
    return G_time_ms + tonumber(string.sub(spec, 2))
  end
  return tonumber(spec)
end

-- The group of a stream entry's fields (payload first, then name/value pairs), or nil.
local function g_field(f)
  for j = 3, #f, 2 do
    if f[j] == 'g' then return f[j + 1] end
  end
  return nil
end

-- Put the group in the ring if it may be admitted now (idempotent: NX keeps its turn).
local function g_ensure(grp)
  if redis.call('LLEN', g_backlog(grp)) == 0 then return end
  if G_cap > 0 and g_count(grp) >= G_cap then return end
  if G_rate > 0 and redis.call('ZSCORE', K_sleep, grp) then return end
  redis.call('ZADD', K_ring, 'NX', redis.call('INCR', K_seq), grp)
end

-- Take one token of the group's bucket: 0 when taken, else ms until one is there.
local function g_token(grp)
  local key = G_base .. ':gt:' .. grp
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local tokens, ts = tonumber(b[1]), tonumber(b[2])
  if tokens == nil or ts == nil then tokens, ts = G_burst, now end
  tokens = math.min(G_burst, tokens + (now - ts) * G_rate / 1000)
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / G_rate) end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(G_burst * 1000 / G_rate) + 60000)
  return wait
end

-- Into the stream of its priority, with its group (the caller counts it).
local function g_xadd(grp, item)
  local prio = tonumber(string.sub(item, 2, 2)) or 0
  redis.call('XADD', g_stream(prio), '*', string.sub(item, 1, 1), string.sub(item, 3), 'g', grp)
end

-- Into the stream, counted.
local function g_send(grp, item)
  g_xadd(grp, item)
  if G_cap > 0 then redis.call('HINCRBY', K_count, grp, 1) end
  G_total = g_total() + 1
end

-- To the tail of the group's backlog.
local function g_push(grp, item)
  if redis.call('RPUSH', g_backlog(grp), item) == 1 then redis.call('SADD', K_keys, grp) end
  redis.call('INCR', K_blen)
end

-- Rate-limited groups whose token is due go back in the ring.
local function g_wake()
  local due = redis.call('ZRANGEBYSCORE', K_sleep, '-inf', g_now(), 'LIMIT', 0, 1000)
  for _, grp in ipairs(due) do
    redis.call('ZREM', K_sleep, grp)
    g_ensure(grp)
  end
end

-- Admit backlog messages, one turn of the ring at a time (up to G_quantum
-- messages of one group per turn), while the window has room. Returns the
-- number admitted.
local function g_admit()
  if G_rate > 0 then g_wake() end
  local total = g_total()
  local n, seq = 0, nil
  while total < G_window do
    local top = redis.call('ZPOPMIN', K_ring)
    if #top == 0 then break end
    local grp = top[1]
    local c = 0
    if G_cap > 0 then c = g_count(grp) end
    -- a group at its cap just leaves the ring (g_leave puts it back)
    if G_cap == 0 or c < G_cap then
      local wait = 0
      if G_rate > 0 then wait = g_token(grp) end
      if wait > 0 then
        redis.call('ZADD', K_sleep, g_now() + wait, grp)
      else
        local bl = g_backlog(grp)
        local k = math.min(G_quantum, G_window - total)
        if G_cap > 0 then k = math.min(k, G_cap - c) end
        local items = redis.call('LPOP', bl, k)
        if items then
          for _, item in ipairs(items) do g_xadd(grp, item) end
          k = #items
          if G_cap > 0 then redis.call('HINCRBY', K_count, grp, k) end
          total, n = total + k, n + k
          if redis.call('LLEN', bl) == 0 then
            redis.call('SREM', K_keys, grp)
          elseif G_cap == 0 or c + k < G_cap then
            -- its next turn is at the tail of the ring
            seq = (seq or tonumber(redis.call('GET', K_seq)) or 0) + 1
            redis.call('ZADD', K_ring, seq, grp)
          end
        else
          redis.call('SREM', K_keys, grp)
        end
      end
    end
  end
  G_total = total
  if n > 0 then
    redis.call('DECRBY', K_blen, n)
    if seq then redis.call('SET', K_seq, seq) end
  end
  return n
end

-- A new message (send, promoted countdown/retry, requeued dead letter): straight
-- into the stream when the group has no backlog and there is room (and a token),
-- else to the tail of its backlog. Returns 1 when it went to the stream.
local function g_enter(grp, item)
  local bl = g_backlog(grp)
  if redis.call('LLEN', bl) > 0 then
    -- behind the group's backlog; the group is in the ring, asleep or at its cap already
    redis.call('RPUSH', bl, item)
    redis.call('INCR', K_blen)
    return 0
  end
  if g_total() < G_window and (G_cap == 0 or g_count(grp) < G_cap) then
    local wait = 0
    if G_rate > 0 then wait = g_token(grp) end
    if wait == 0 then
      g_send(grp, item)
      return 1
    end
    g_push(grp, item)
    redis.call('ZADD', K_sleep, g_now() + wait, grp)
    return 0
  end
  g_push(grp, item)
  g_ensure(grp)
  return 0
end

-- n messages of the group left the streams for good (counted only under a cap).
local function g_leave(grp, n)
  if G_cap == 0 then return end
  local c = redis.call('HINCRBY', K_count, grp, -n)
  if c <= 0 then redis.call('HDEL', K_count, grp) end
  -- back under its cap: it may take turns again
  if c < G_cap and c + n >= G_cap then g_ensure(grp) end
end

-- A delivery count field read from a stream entry: its number, or nil when it is
-- not a whole number of at most 9 digits (anything may write to a stream; a bad
-- count must not make the script fail for every other entry it handles).
local function g_dc(v)
  if type(v) ~= 'string' or #v > 9 or not string.match(v, '^%d+$') then return nil end
  return tonumber(v)
end

local function g_bad_dc(v)
  return 'delivery count field dc=' .. string.sub(tostring(v), 1, 60) .. ' is not a whole number below 10**9'
end

-- Dead-letter a message (stream fields f) into dlq with why it died; a gated
-- message keeps its group ('g') and, when release is set, frees its place.
-- Returns the dead letter's entry id.
local function g_bury(dlq, f, reason, err, queue, dc, grp, release)
  local id
  if grp then
    id = redis.call('XADD', dlq, '*', f[1], f[2], 'reason', reason, 'error', err, 'queue', queue, 'dc', dc, 'g', grp)
    if release then g_leave(grp, 1) end
  else
    id = redis.call('XADD', dlq, '*', f[1], f[2], 'reason', reason, 'error', err, 'queue', queue, 'dc', dc)
  end
  return id
end

-- A delayed-set member of a gated message: 'g', field, priority digit,
-- <length of group>, ':', group, payload. item is field, priority digit, payload.
local function g_member(grp, item)
  return 'g' .. string.sub(item, 1, 2) .. #grp .. ':' .. grp .. string.sub(item, 3)
end

-- Is item (field byte, priority digit, payload) one fastq wrote?
local function g_item_ok(item)
  return string.match(string.sub(item, 1, 2), '^[pj]%d$') ~= nil
end

-- Split such a member into (group, item); nil when it is not one (anything may
-- write to the delayed set: the caller dead-letters what it cannot read).
local function g_split(m)
  local colon = string.find(m, ':', 4, true)
  if not colon then return nil end
  local n = tonumber(string.sub(m, 4, colon - 1))
  if not n or n < 1 or n ~= math.floor(n) or colon + n > #m then return nil end
  local item = string.sub(m, 2, 3) .. string.sub(m, colon + n + 1)
  if not g_item_ok(item) then return nil end
  return string.sub(m, colon + 1, colon + n), item
end

-- Dead-letter a delayed-set member that is not a message fastq wrote, with why.
local function g_bury_member(dlq, m, queue)
  redis.call('XADD', dlq, '*', 'raw', m, 'reason', 'malformed',
             'error', 'delayed-set member is not <field><priority><payload>', 'queue', queue, 'dc', 0)
end

