-- Find workers whose last heartbeat (Redis clock) is older than timeout_ms.
-- ARGV: hb_zset, timeout_ms. Returns their ids.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call("ZRANGEBYSCORE", ARGV[1], "-inf", now - tonumber(ARGV[2]))
