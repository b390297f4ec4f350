-- Acknowledge a processed message: release it, forget its body and delivery
-- count, and write its message.processed event, all only if this worker still
-- holds it; a fan-in child also settles its group (_fanin.lua).
-- ARGV: namespace, queue_name, worker_id, redis_message_id,
--       group key ("" for none), message id, events (E; "" for none).
-- Type checks: the stream's by its XLEN, the in-flight set's by the SREM that
-- is the first write (it fails before anything is written); every other key
-- written by TYPE before that.
local E = iii_decode(ARGV[7])
local q = ARGV[1] .. ":" .. ARGV[2]
local len = iii_stream_len(E)
local err = iii_checks(iii_event_keys(E, {{q .. ".msgs", "hash"}, {q .. ".deliveries", "hash"}, {ARGV[5] or "", "hash"}}, true))
if err then return err end
local r = 0
if redis.call("SREM", ARGV[1] .. ":__acks__." .. ARGV[3] .. "." .. ARGV[2], ARGV[4]) > 0 then r = 1 end
local added = iii_pre(E)
if r == 1 then
  redis.call("HDEL", q .. ".msgs", ARGV[4])
  redis.call("HDEL", q .. ".deliveries", ARGV[4])
  added = added + iii_settle(E)
  iii_fanin(ARGV[1], ARGV[5], ARGV[6], "ok", E)
end
iii_trim_after(E, len, added)
return r
