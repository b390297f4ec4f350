-- Enqueue copies of a message to several Dramatiq queues in one atomic step,
-- with their message.enqueued events.
-- ARGV: namespace, once_key ("" for none), once_ttl_ms, delay_ms, events (E),
--       floor_key ("" for none), floor_ms, floor_json,
--       then triples of (queue_name, redis_message_id, encoded_message).
-- With once_key, nothing is enqueued if the key already exists (returns 0):
-- this is how a cron tick or a state trigger is enqueued exactly once across
-- processes. With floor_key (a cron trigger's `cron-last`), nothing is
-- enqueued either if that key records a tick at or after floor_ms, and on
-- success it is set to floor_json: a tick is never fired at or before the last
-- one fired, whatever the schedulers' clocks say and however long ago the
-- tick's once_key expired.
-- A delayed copy waits in its queue's `.delayed` sorted set, due at Redis's
-- clock + delay_ms, and the queue is indexed in `__delayed__` by its earliest
-- due time for promote.lua. Each push also drops a token on the queue's wake
-- list so idle consumers blocked on it fetch at once instead of polling.
local ns = ARGV[1]
local E = iii_decode(ARGV[5])
local delayed = tonumber(ARGV[4]) > 0
local checks = iii_event_keys(E, delayed and {{ns .. ":__delayed__", "zset"}, {ns .. ":__delayed__.wake", "list"}} or {})
for i = 9, #ARGV, 3 do
  local q = ns .. ":" .. ARGV[i]
  table.insert(checks, {q .. ".msgs", "hash"})
  if delayed then
    table.insert(checks, {q .. ".delayed", "zset"})
  else
    table.insert(checks, {q, "list"})
    table.insert(checks, {q .. ".wake", "list"})
  end
end
if ARGV[6] ~= "" then table.insert(checks, {ARGV[6], "string"}) end
if ARGV[2] ~= "" then table.insert(checks, {ARGV[2], "string"}) end
local err = iii_checks(checks)
if err then return err end
iii_pre(E)
if ARGV[6] ~= "" then
  local last = redis.call("GET", ARGV[6])
  if last then
    local ok, d = pcall(cjson.decode, last)
    if ok and type(d) == "table" and tonumber(d.scheduled_ms) and tonumber(d.scheduled_ms) >= tonumber(ARGV[7]) then
      iii_trim(E)
      return 0
    end
  end
end
if ARGV[2] ~= "" then
  if not redis.call("SET", ARGV[2], "1", "NX", "PX", ARGV[3]) then
    iii_trim(E)
    return 0
  end
end
local delay = tonumber(ARGV[4])
local due = 0
if delay > 0 then due = iii_now_ms() + delay end
local n = 0
for i = 9, #ARGV, 3 do
  local q = ns .. ":" .. ARGV[i]
  redis.call("HSET", q .. ".msgs", ARGV[i + 1], ARGV[i + 2])
  if delay > 0 then
    redis.call("ZADD", q .. ".delayed", due, ARGV[i + 1])
    redis.call("ZADD", ns .. ":__delayed__", "LT", due, ARGV[i])
  else
    redis.call("RPUSH", q, ARGV[i + 1])
    redis.call("RPUSH", q .. ".wake", "1")
    redis.call("LTRIM", q .. ".wake", -64, -1)
  end
  n = n + 1
end
if delay > 0 and n > 0 then
  redis.call("RPUSH", ns .. ":__delayed__.wake", "1")
  redis.call("LTRIM", ns .. ":__delayed__.wake", -64, -1)
end
if ARGV[6] ~= "" then redis.call("SET", ARGV[6], ARGV[8]) end
iii_settle(E)
iii_trim(E)
return n
