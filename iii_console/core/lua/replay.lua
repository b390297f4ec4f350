-- Move one dead-letter entry back onto its queue as a new message, atomically.
-- ARGV: namespace, queue_name, redis_message_id, encoded_message,
--       dlq_entries_key, dlq_index_key, entry_id
-- Returns 1, or 0 if the entry is gone (replayed or purged meanwhile):
-- then nothing is enqueued, so a double replay cannot run a message twice.
if redis.call("HEXISTS", ARGV[5], ARGV[7]) == 0 then return 0 end
local q = ARGV[1] .. ":" .. ARGV[2]
redis.call("HSET", q .. ".msgs", ARGV[3], ARGV[4])
redis.call("RPUSH", q, ARGV[3])
redis.call("RPUSH", q .. ".wake", "1")
redis.call("LTRIM", q .. ".wake", -64, -1)
redis.call("HDEL", ARGV[5], ARGV[7])
redis.call("ZREM", ARGV[6], ARGV[7])
return 1
