-- requeue_dead.lua for a fair queue (gate.lua is put in front): move dead letters
-- back with a fresh delivery count; one that carries a group (field `g`) goes
-- through the gate, one without to the priority-0 stream.
-- KEYS[1]: the dead-letter stream   ARGV: base, window, cap, rate, burst, dead-letter entry id...
-- Returns the number moved.
gate_init(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
local moved = 0
for i = 6, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e == 1 then
    local f = e[1][2]
    local grp = g_field(f)
    if grp then
      g_enter(grp, f[1] .. '0' .. f[2])
    else
      redis.call('XADD', g_stream(0), '*', f[1], f[2])
      if G_total then G_total = G_total + 1 end
    end
    redis.call('XDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
g_admit()
return moved
