-- Enqueue copies of a message to several Dramatiq queues in one atomic step.
-- ARGV: namespace, once_key ("" for none), once_ttl_ms, then triples of
--       (queue_name, redis_message_id, encoded_message).
-- With once_key, nothing is enqueued if the key already exists (returns 0):
-- this is how a cron tick or a state trigger is enqueued exactly once across
-- processes. Each push also drops a token on the queue's wake list so idle
-- consumers blocked on it fetch at once instead of polling.
local ns = ARGV[1]
if ARGV[2] ~= "" then
  if not redis.call("SET", ARGV[2], "1", "NX", "PX", ARGV[3]) then return 0 end
end
local n = 0
for i = 4, #ARGV, 3 do
  local q = ns .. ":" .. ARGV[i]
  redis.call("HSET", q .. ".msgs", ARGV[i + 1], ARGV[i + 2])
  redis.call("RPUSH", q, ARGV[i + 1])
  redis.call("RPUSH", q .. ".wake", "1")
  redis.call("LTRIM", q .. ".wake", -64, -1)
  n = n + 1
end
return n
