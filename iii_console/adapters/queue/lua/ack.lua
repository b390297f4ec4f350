-- Acknowledge a processed message: release it and forget its body and delivery count.
-- ARGV: namespace, queue_name, worker_id, redis_message_id
local q = ARGV[1] .. ":" .. ARGV[2]
if redis.call("SREM", ARGV[1] .. ":__acks__." .. ARGV[3] .. "." .. ARGV[2], ARGV[4]) > 0 then
  redis.call("HDEL", q .. ".msgs", ARGV[4])
  redis.call("HDEL", q .. ".deliveries", ARGV[4])
  return 1
end
return 0
