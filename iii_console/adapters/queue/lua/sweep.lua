-- Find workers whose last heartbeat (Redis clock) is older than timeout_ms.
-- ARGV: hb_zset, timeout_ms, clock_key, interval_ms. Returns their ids.
--
-- clock_key holds the Redis time of the last sweep by any process; sweeps come every interval_ms
-- from each. A sweep that finds it older than twice that (Redis itself was paused: SIGSTOP, a
-- stall; or no process swept) first moves every heartbeat forward by the gap less one interval:
-- heartbeats could not be written while Redis was not answering, so that time does not count
-- against any worker. Without it, the sweeps that run first as Redis resumes found every live
-- worker dead and ran its messages again.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local timeout, interval = tonumber(ARGV[2]), tonumber(ARGV[4])
local last = tonumber(redis.call("GET", ARGV[3]) or "0") or 0
redis.call("SET", ARGV[3], now, "PX", math.max(timeout, interval) * 10)
local gap = now - last
if last > 0 and gap > 2 * interval then
  local shift = gap - interval
  local all = redis.call("ZRANGE", ARGV[1], 0, -1, "WITHSCORES")
  for i = 1, #all, 2 do
    redis.call("ZADD", ARGV[1], "XX", math.min(now, tonumber(all[i + 1]) + shift), all[i])
  end
end
return redis.call("ZRANGEBYSCORE", ARGV[1], "-inf", now - timeout)
