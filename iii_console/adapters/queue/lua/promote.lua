-- Move a due delayed message from this worker's hands to its queue, atomically.
-- ARGV: namespace, delay_queue, worker_id, redis_message_id, queue_name,
--       new_redis_message_id, new_data
-- Returns 1, or -1 if this worker no longer owns the delayed message (it was
-- swept back to the delay queue while the worker was stalled, and another
-- worker promotes it): then nothing is written, so the retry runs once.
-- Stock Dramatiq enqueues the copy and acks the delayed one in two calls, with
-- no ownership check.
local ns, dq, wid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local acks = ns .. ":__acks__." .. wid .. "." .. dq
if redis.call("SISMEMBER", acks, id) == 0 then return -1 end
local q = ns .. ":" .. ARGV[5]
redis.call("HSET", q .. ".msgs", ARGV[6], ARGV[7])
redis.call("RPUSH", q, ARGV[6])
redis.call("RPUSH", q .. ".wake", "1")
redis.call("LTRIM", q .. ".wake", -64, -1)
redis.call("SREM", acks, id)
redis.call("HDEL", ns .. ":" .. dq .. ".msgs", id)
redis.call("HDEL", ns .. ":" .. dq .. ".deliveries", id)
return 1
