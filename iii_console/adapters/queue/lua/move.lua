-- Atomically replace a message this worker holds with a new copy on another queue:
-- a failed message's retry onto the delay queue, and a due delayed message onto
-- its queue.
-- ARGV: namespace, from_queue, worker_id, redis_message_id,
--       to_queue, new_redis_message_id, new_data
-- Writes to the target first: if that fails, nothing has changed and the
-- message is still in flight here (so it is retried, never lost).
-- Returns 1, or -1 if this worker no longer owns the message (it was swept
-- back while the worker was stalled, and will run again or be moved by
-- another worker), in which case nothing is written, so it runs once.
-- Stock Dramatiq enqueues the copy and acks the original in two calls, with no
-- ownership check.
local ns, from, wid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local acks = ns .. ":__acks__." .. wid .. "." .. from
if redis.call("SISMEMBER", acks, id) == 0 then return -1 end
local to = ns .. ":" .. ARGV[5]
redis.call("HSET", to .. ".msgs", ARGV[6], ARGV[7])
redis.call("RPUSH", to, ARGV[6])
redis.call("RPUSH", to .. ".wake", "1")
redis.call("LTRIM", to .. ".wake", -64, -1)
redis.call("SREM", acks, id)
redis.call("HDEL", ns .. ":" .. from .. ".msgs", id)
redis.call("HDEL", ns .. ":" .. from .. ".deliveries", id)
return 1
