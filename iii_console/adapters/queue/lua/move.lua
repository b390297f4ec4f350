-- Atomically replace a message this worker holds with its retry: a new copy
-- on the subscription's queue, delayed by delay_ms (held in Redis, in the
-- queue's `.delayed` sorted set scored by Redis's clock, until promote.lua
-- moves it), with its message.retrying event.
-- ARGV: namespace, from_queue, worker_id, redis_message_id,
--       toqueue, new_redis_message_id, new_data, delay_ms, events (E)
-- Writes the copy first: if that fails, nothing has changed and the message
-- is still in flight here (so it is retried, never lost).
-- Returns 1, or -1 if this worker no longer owns the message (it was swept
-- back while the worker was stalled, and will run again elsewhere), in which
-- case no copy and no event are written, so the retry chain stays single.
local ns, from, wid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local E = iii_decode(ARGV[9])
local to = ns .. ":" .. ARGV[5]
local delay = tonumber(ARGV[8])
-- The in-flight set's type is checked by SISMEMBER, the stream's by XLEN,
-- both read before anything is written.
local acks = ns .. ":__acks__." .. wid .. "." .. from
local owned = redis.call("SISMEMBER", acks, id)
local len = iii_stream_len(E)
local checks = {{to .. ".msgs", "hash"}, {ns .. ":" .. from .. ".msgs", "hash"}, {ns .. ":" .. from .. ".deliveries", "hash"}}
if delay > 0 then
  for _, kt in ipairs({{to .. ".delayed", "zset"}, {ns .. ":__delayed__", "zset"}, {ns .. ":__delayed__.wake", "list"}}) do
    table.insert(checks, kt)
  end
else
  table.insert(checks, {to, "list"})
  table.insert(checks, {to .. ".wake", "list"})
end
local err = iii_checks(iii_event_keys(E, checks, true))
if err then return err end
local added = iii_pre(E)
if owned == 0 then
  iii_trim_after(E, len, added)
  return -1
end
redis.call("HSET", to .. ".msgs", ARGV[6], ARGV[7])
if delay > 0 then
  local due = iii_now_ms() + delay
  redis.call("ZADD", to .. ".delayed", due, ARGV[6])
  redis.call("ZADD", ns .. ":__delayed__", "LT", due, ARGV[5])
  iii_wake(ns .. ":__delayed__.wake")
else
  redis.call("RPUSH", to, ARGV[6])
  iii_wake(to .. ".wake")
end
redis.call("SREM", acks, id)
redis.call("HDEL", ns .. ":" .. from .. ".msgs", id)
redis.call("HDEL", ns .. ":" .. from .. ".deliveries", id)
added = added + iii_settle(E)
iii_trim_after(E, len, added)
return 1
