-- Acknowledge a processed message: release it, forget its body and delivery
-- count, and write its message.processed event, all only if this worker still
-- holds it; a fan-in child also settles its group (_fanin.lua).
-- ARGV: namespace, queue_name, worker_id, redis_message_id, events (E),
--       group key ("" or absent for none), message id.
local E = iii_decode(ARGV[5])
local q = ARGV[1] .. ":" .. ARGV[2]
local err = iii_checks(iii_event_keys(E, {{ARGV[1] .. ":__acks__." .. ARGV[3] .. "." .. ARGV[2], "set"},
  {q .. ".msgs", "hash"}, {q .. ".deliveries", "hash"}, {ARGV[6] or "", "hash"}}))
if err then return err end
iii_pre(E)
local r = 0
if redis.call("SREM", ARGV[1] .. ":__acks__." .. ARGV[3] .. "." .. ARGV[2], ARGV[4]) > 0 then
  redis.call("HDEL", q .. ".msgs", ARGV[4])
  redis.call("HDEL", q .. ".deliveries", ARGV[4])
  iii_settle(E)
  iii_fanin(ARGV[1], ARGV[6], ARGV[7], "ok", E)
  r = 1
end
iii_trim(E)
return r
