-- Atomically replace an in-flight message with its retry on the delay queue.
-- ARGV: namespace, current_queue, worker_id, redis_message_id,
--       delay_queue, new_redis_message_id, new_data
-- Writes to the target first: if that fails, nothing has changed and the
-- message is still in flight here (so it is retried, never lost).
-- Returns 1, or -1 if this worker no longer owns the message (it was swept
-- back to its queue and will run again), in which case nothing is written.
local ns, cur, wid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local acks = ns .. ":__acks__." .. wid .. "." .. cur
if redis.call("SISMEMBER", acks, id) == 0 then return -1 end
local dq = ns .. ":" .. ARGV[5]
redis.call("HSET", dq .. ".msgs", ARGV[6], ARGV[7])
redis.call("RPUSH", dq, ARGV[6])
redis.call("RPUSH", dq .. ".wake", "1")
redis.call("LTRIM", dq .. ".wake", -64, -1)
redis.call("SREM", acks, id)
redis.call("HDEL", ns .. ":" .. cur .. ".msgs", id)
redis.call("HDEL", ns .. ":" .. cur .. ".deliveries", id)
return 1
