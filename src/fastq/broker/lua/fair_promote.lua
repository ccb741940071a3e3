-- promote.lua for a fair queue, and its pump (gate.lua is put in front). Run by
-- every worker every worker_promote_interval.
-- KEYS[1]: the queue's delayed set   KEYS[2]: the dead-letter stream
-- ARGV: base, window, cap, rate, burst, max messages to move, the queue's name
-- A due member that carries a group ('g' ...) goes through the gate (its stream,
-- or the tail of its group's backlog); one without goes to its stream as in
-- promote.lua. Then rate-limited groups whose token is due are woken and the
-- window is filled from the backlogs. Returns the number of due members moved.
gate_init(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', g_now(), 'LIMIT', 0, tonumber(ARGV[6]))
for _, m in ipairs(due) do
  local grp, item = nil, nil
  if string.byte(m, 1) == 103 then grp, item = g_split(m) end  -- 'g'
  if grp then
    g_enter(grp, item)
  elseif string.byte(m, 1) ~= 103 and g_item_ok(m) then
    local prio = tonumber(string.sub(m, 2, 2))
    redis.call('XADD', g_stream(prio), '*', string.sub(m, 1, 1), string.sub(m, 3))
    if G_total then G_total = G_total + 1 end
  else  -- not a message fastq wrote: dead-lettered, never an error for the whole queue
    g_bury_member(KEYS[2], m, ARGV[7])
  end
  redis.call('ZREM', KEYS[1], m)
end
g_admit()
return #due
