-- Send one periodic run, exactly once per entry and due time.
-- KEYS[1]: the entry's state hash (in the queue's slot): due = the latest due
--          time sent (ms), sent = server ms it was sent, id = its task id
-- KEYS[2]: the priority stream the run goes to
-- ARGV: due_ms, task_id, field, payload, priority digit, and for a fair queue:
--       base, window, cap, rate, burst, group (the run enters through the gate;
--       gate.lua is put in front)
-- A run whose due time is not later than the last one sent is refused, so two
-- beats that both think they lead (or a leader retrying after a lost reply)
-- never send a run twice. The check, the send and the state update are one
-- atomic step: a crash leaves the run either fully sent or not sent.
-- Returns 1 when sent, 0 when refused.
local due = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'due'))
if last and last >= due then return 0 end
if ARGV[6] then
  gate_init(ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
  g_enter(ARGV[11], ARGV[3] .. ARGV[5] .. ARGV[4])
  g_admit()
else
  redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[4])
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'due', ARGV[1], 'id', ARGV[2],
           'sent', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return 1
