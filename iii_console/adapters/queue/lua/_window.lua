-- A key's window of starts (throttle.lua, throttle_started.lua): a sorted set of records
-- scored by when each started (Redis ms), trimmed to the last period_ms.
-- Records member at now and returns nil if the window has room for it, else how long
-- until its oldest record leaves the window (ms). Only an admission writes.
local function iii_window_admit(win, limit, period, member, now)
  redis.call("ZREMRANGEBYSCORE", win, "-inf", now - period)
  if redis.call("ZCARD", win) >= limit then
    local oldest = redis.call("ZRANGE", win, 0, 0, "WITHSCORES")
    return math.max(1, tonumber(oldest[2]) + period - now + 1)
  end
  redis.call("ZADD", win, now, member)
  redis.call("PEXPIRE", win, period)
  return nil
end
