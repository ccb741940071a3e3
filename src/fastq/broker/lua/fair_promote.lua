-- promote.lua for a fair queue, and its pump (gate.lua is put in front). Run by
-- every worker every worker_promote_interval.
-- KEYS[1]: the queue's delayed set
-- ARGV: base, window, cap, rate, burst, max messages to move
-- A due member that carries a group ('g' ...) goes through the gate (its stream,
-- or the tail of its group's backlog); one without goes to its stream as in
-- promote.lua. Then rate-limited groups whose token is due are woken and the
-- window is filled from the backlogs. Returns the number of due members moved.
gate_init(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', g_now(), 'LIMIT', 0, tonumber(ARGV[6]))
for _, m in ipairs(due) do
  if string.byte(m, 1) == 103 then  -- 'g'
    local grp, item = g_split(m)
    g_enter(grp, item)
  else
    local prio = tonumber(string.sub(m, 2, 2)) or 0
    redis.call('XADD', g_stream(prio), '*', string.sub(m, 1, 1), string.sub(m, 3))
    if G_total then G_total = G_total + 1 end
  end
  redis.call('ZREM', KEYS[1], m)
end
g_admit()
return #due
