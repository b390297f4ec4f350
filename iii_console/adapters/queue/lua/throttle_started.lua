-- A handler started well after its admission (throttle.lua): its record in the key's
-- window moves to now (Redis clock), so the window counts when handlers really start.
-- Without it, starts delayed after admission (a worker's first messages, a slow input
-- check) and the next period's starts, on time, fell closer together than the period.
-- ARGV: window_key, member (as throttle.lua recorded it), period_ms, limit.
-- Returns {0, now}: it starts. {2, wait_ms}: it must not start, and waits.
-- A record still in the window only ever moves later. One that has left it (the
-- handler starts more than period_ms after its admission, or the key expired) no
-- longer counts, and others may have been admitted in its place: the start is
-- admitted again, recorded now if the window has room, else it waits as throttle.lua
-- would have it wait (until its oldest start leaves the window).
local win, member = ARGV[1], ARGV[2]
local period, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local recorded = redis.call("ZSCORE", win, member)
if recorded and tonumber(recorded) > now - period then
  redis.call("ZADD", win, "GT", now, member)
  redis.call("PEXPIRE", win, period)
  return {0, now}
end
local wait = iii_window_admit(win, limit, period, member, now)
if wait then return {2, wait} end
return {0, now}
