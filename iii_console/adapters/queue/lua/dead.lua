-- Atomically move an in-flight message into a named dead-letter queue, with
-- its message.dead_lettered event.
-- ARGV: namespace, current_queue, worker_id, redis_message_id,
--       dlq_name, entry_id, entry_json, score_ms,
--       dlq_index_key, dlq_entries_key, dlq_names_key,
--       group key ("" for none), message id, outcome for the group
--       ("failed": its handler raised; "dead": it never ran to a result),
--       events (E)
-- Same ordering rule as move.lua: write the entry, then release the message.
-- Returns 1, or -1 (nothing written but E's buffered events) if this worker
-- no longer owns the message.
local ns, cur, wid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local E = iii_decode(ARGV[15])
-- The in-flight set's type is checked by SISMEMBER, the stream's by XLEN,
-- both read before anything is written.
local acks = ns .. ":__acks__." .. wid .. "." .. cur
local owned = redis.call("SISMEMBER", acks, id)
local len = iii_stream_len(E)
local err = iii_checks(iii_event_keys(E, {{ARGV[10], "hash"}, {ARGV[9], "zset"}, {ARGV[11], "set"},
  {ns .. ":" .. cur .. ".msgs", "hash"}, {ns .. ":" .. cur .. ".deliveries", "hash"}, {ARGV[12], "hash"}}, true))
if err then return err end
local added = iii_pre(E)
if owned == 0 then
  iii_trim_after(E, len, added)
  return -1
end
redis.call("HSET", ARGV[10], ARGV[6], ARGV[7])
redis.call("ZADD", ARGV[9], ARGV[8], ARGV[6])
redis.call("SADD", ARGV[11], ARGV[5])
redis.call("SREM", acks, id)
redis.call("HDEL", ns .. ":" .. cur .. ".msgs", id)
redis.call("HDEL", ns .. ":" .. cur .. ".deliveries", id)
added = added + iii_settle(E)
iii_fanin(ns, ARGV[12], ARGV[13], ARGV[14], E)
iii_trim_after(E, len, added)
return 1
