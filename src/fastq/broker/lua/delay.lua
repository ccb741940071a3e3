-- File messages in a queue's delayed set (countdowns, ETAs), due on Redis's clock.
-- KEYS[1]: the delayed set
-- ARGV: {due, member}... where due is '+<ms>' (that long after this server's
--       TIME: a countdown) or '<ms>' (an absolute time, epoch ms: an ETA), and
--       member is <field byte><priority digit><payload> (fair: see gate.lua)
-- gate.lua is put in front (g_due). Returns the number filed.
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], g_due(ARGV[i]), ARGV[i + 1])
end
return #ARGV / 2
