-- Record a worker heartbeat with Redis's own clock, so host clock skew can
-- never make a live worker look dead. ARGV: hb_zset, workers_hash, worker_id, info_json
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("ZADD", ARGV[1], now, ARGV[3])
redis.call("HSET", ARGV[2], ARGV[3], ARGV[4])
return now
