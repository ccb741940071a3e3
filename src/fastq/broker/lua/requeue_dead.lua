-- Move dead letters back to their queue's stream with a fresh delivery count.
-- KEYS[1]: the dead-letter stream   KEYS[2]: the target stream
-- ARGV: dead-letter entry id... ; Returns the number moved.
local moved = 0
for i = 1, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e == 1 then
    local f = e[1][2]
    redis.call('XADD', KEYS[2], '*', f[1], f[2])
    redis.call('XDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
