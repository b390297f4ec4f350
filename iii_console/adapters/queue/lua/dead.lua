-- Atomically move an in-flight message into a named dead-letter queue.
-- ARGV: namespace, current_queue, worker_id, redis_message_id,
--       dlq_name, entry_id, entry_json, score_ms,
--       dlq_index_key, dlq_entries_key, dlq_names_key
-- Same ordering rule as move.lua: write the entry, then release the message.
local ns, cur, wid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local acks = ns .. ":__acks__." .. wid .. "." .. cur
if redis.call("SISMEMBER", acks, id) == 0 then return -1 end
redis.call("HSET", ARGV[10], ARGV[6], ARGV[7])
redis.call("ZADD", ARGV[9], ARGV[8], ARGV[6])
redis.call("SADD", ARGV[11], ARGV[5])
redis.call("SREM", acks, id)
redis.call("HDEL", ns .. ":" .. cur .. ".msgs", id)
redis.call("HDEL", ns .. ":" .. cur .. ".deliveries", id)
return 1
