-- A handler started well after its admission (throttle.lua): its record in the key's
-- window moves to now (Redis clock), so the window counts when handlers really start.
-- Without it, starts delayed after admission (a worker's first messages, a slow input
-- check) and the next period's starts, on time, fell closer together than the period.
-- ARGV: window_key, member (as throttle.lua recorded it), period_ms.
-- GT: a record only ever moves later; one already gone from the window is added back.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZADD", ARGV[1], "GT", now, ARGV[2])
redis.call("PEXPIRE", ARGV[1], ARGV[3])
return now
