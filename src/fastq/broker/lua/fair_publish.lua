-- Send messages to a fair queue through its gate (gate.lua is put in front).
-- KEYS[1]: the queue's gate count hash (routes the call to the queue's slot)
-- ARGV: base, window, cap, rate, burst, then {group, item}... where item is the
--       field byte, the priority digit and the payload
-- Each message goes straight into its stream when its group has no backlog and
-- the window (and the group's cap and rate) allow, else to the tail of its
-- group's backlog. Returns the number that went straight into a stream.
gate_init(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local sent = 0
for i = 6, #ARGV, 2 do
  sent = sent + g_enter(ARGV[i], ARGV[i + 1])
end
g_admit()
return sent
