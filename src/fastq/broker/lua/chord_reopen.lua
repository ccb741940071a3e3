-- Make a finished chord new again, before a frozen chord is applied a second
-- time with the same ids (Celery: each apply of a frozen chord is a new run).
-- KEYS[1]: the chord's state hash (see chord_done.lua)
-- KEYS[2]: the chord's results hash
-- No ARGV. Only a chord whose decision was acted on (`sent` set) is reset; one
-- still running is left alone (its header tasks are still counting).
-- Returns 1 when it reset the chord, else 0.
if redis.call('HGET', KEYS[1], 'sent') then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
