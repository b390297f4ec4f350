-- Atomically replace a message this worker holds with its retry: a new copy
-- on the subscription's queue, delayed by delay_ms (held in Redis, in the
-- queue's `.delayed` sorted set scored by Redis's clock, until promote.lua
-- moves it), with its message.retrying event.
-- ARGV: namespace, from_queue, worker_id, redis_message_id,
--       to_queue, new_redis_message_id, new_data, delay_ms, events (E)
-- Writes the copy first: if that fails, nothing has changed and the message
-- is still in flight here (so it is retried, never lost).
-- Returns 1, or -1 if this worker no longer owns the message (it was swept
-- back while the worker was stalled, and will run again elsewhere), in which
-- case no copy and no event are written, so the retry chain stays single.
local ns, from, wid, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local E = iii_decode(ARGV[9])
local to_ = ns .. ":" .. ARGV[5]
local later = tonumber(ARGV[8]) > 0
local err = iii_checks(iii_event_keys(E, {{to_ .. ".msgs", "hash"},
  later and {to_ .. ".delayed", "zset"} or {to_, "list"}, later and {ns .. ":__delayed__", "zset"} or {to_ .. ".wake", "list"},
  later and {ns .. ":__delayed__.wake", "list"} or {to_ .. ".wake", "list"},
  {ns .. ":__acks__." .. wid .. "." .. from, "set"}, {ns .. ":" .. from .. ".msgs", "hash"}, {ns .. ":" .. from .. ".deliveries", "hash"}}))
if err then return err end
iii_pre(E)
local acks = ns .. ":__acks__." .. wid .. "." .. from
if redis.call("SISMEMBER", acks, id) == 0 then
  iii_trim(E)
  return -1
end
local to = ns .. ":" .. ARGV[5]
local delay = tonumber(ARGV[8])
redis.call("HSET", to .. ".msgs", ARGV[6], ARGV[7])
if delay > 0 then
  local due = iii_now_ms() + delay
  redis.call("ZADD", to .. ".delayed", due, ARGV[6])
  redis.call("ZADD", ns .. ":__delayed__", "LT", due, ARGV[5])
  redis.call("RPUSH", ns .. ":__delayed__.wake", "1")
  redis.call("LTRIM", ns .. ":__delayed__.wake", -64, -1)
else
  redis.call("RPUSH", to, ARGV[6])
  redis.call("RPUSH", to .. ".wake", "1")
  redis.call("LTRIM", to .. ".wake", -64, -1)
end
redis.call("SREM", acks, id)
redis.call("HDEL", ns .. ":" .. from .. ".msgs", id)
redis.call("HDEL", ns .. ":" .. from .. ".deliveries", id)
iii_settle(E)
iii_trim(E)
return 1
