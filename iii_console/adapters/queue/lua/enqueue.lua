-- Enqueue copies of a message to several Dramatiq queues in one atomic step,
-- with their message.enqueued events.
-- ARGV: namespace, once_key ("" for none), once_ttl_ms, delay_ms, events (E),
--       floor_key ("" for none), floor_ms, floor_json, extras (X, JSON or ""),
--       then triples of (queue_name, redis_message_id, encoded_message).
-- With once_key, nothing is enqueued if the key already exists (returns 0):
-- this is how a cron tick or a state trigger is enqueued exactly once across
-- processes. X.v makes it a dedup key: the key holds X.v (the message ids, as
-- JSON) and a second enqueue under it returns what it holds (a string) and
-- writes X.dev (a message.deduplicated event whose "__III_IDS__" becomes those
-- ids, with its counters X.dst) instead of enqueueing. X.g = {key, fields} writes a fan-in group's
-- record (fanin.lua) with its children, so a group exists exactly when they do; nothing is
-- enqueued (returns 0) while a group of that id is still running. X.won (RabbitMQ) is where a claim
-- taken on once_key is also recorded, for X.won_ttl ms: the run-key of the next claim is named after it.
-- With floor_key (a cron trigger's `cron-last`), nothing is
-- enqueued either if that key records a tick at or after floor_ms, and on
-- success it is set to floor_json: a tick is never fired at or before the last
-- one fired, whatever the schedulers' clocks say and however long ago the
-- tick's once_key expired.
-- A delayed copy waits in its queue's `.delayed` sorted set, due at Redis's
-- clock + delay_ms, and the queue is indexed in `__delayed__` by its earliest
-- due time for promote.lua. Each push also drops a token on the queue's wake
-- list so idle consumers blocked on it fetch at once instead of polling.
-- The body of `iii_enqueue(ARGV, check_only, checked)` (scripts.py wraps it): with
-- check_only it returns after its checks (nil, or their error) and writes nothing, and hands
-- back as a second value what it decoded; given that back as `checked`, it neither decodes
-- its arguments again nor repeats the checks (nothing the caller wrote in between changed a
-- checked key's type: a unit of work writes only keys it checked, of the types checked).
local ns = ARGV[1]
local E, X
if checked then
  E, X = checked.E, checked.X
else
  E = iii_decode(ARGV[5])
  local delayed = tonumber(ARGV[4]) > 0
  local checks = iii_event_keys(E, delayed and {{ns .. ":__delayed__", "zset"}, {ns .. ":__delayed__.wake", "list"}} or {})
  X = iii_decode(ARGV[9])
  for i = 10, #ARGV, 3 do
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
  if X ~= nil and X.g ~= nil then table.insert(checks, {X.g.key, "hash"}) end
  local err = iii_checks(checks)
  if err then return err end
  -- A unit of work (runtime/uow.py) checks every enqueue of a request before it writes anything.
  if check_only then return nil, {E = E, X = X} end
end
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
if X ~= nil and X.g ~= nil and redis.call("EXISTS", X.g.key) == 1 and not redis.call("HGET", X.g.key, "completed_ms") then
  -- A group of this id is still running (used more than the once-key's 24 h ago): it is not replaced.
  iii_trim(E)
  return 0
end
if ARGV[2] ~= "" then
  local value = (X ~= nil and X.v) or "1"
  if redis.call("SET", ARGV[2], value, "NX", "PX", ARGV[3]) then
    -- RabbitMQ: the claim's value, kept past the claim, names the run-key of the next claim on this key.
    if X ~= nil and X.won then redis.call("SET", X.won, value, "PX", X.won_ttl) end
  else
    if X ~= nil and X.v then
      local first = redis.call("GET", ARGV[2])
      if E ~= nil and X.dev then
        for _, f in ipairs(X.dev) do
          for j = 2, #f, 2 do f[j] = iii_fill(f[j], '"__III_IDS__"', first) end
        end
        iii_write(E, X.dev, X.dst)
      end
      iii_trim(E)
      return first
    end
    iii_trim(E)
    return 0
  end
end
if X ~= nil and X.g ~= nil then
  -- A completed group of this id (kept 7 days) gives way to the new one: none of its children or
  -- counts, nor its expiry, carry over.
  redis.call("DEL", X.g.key)
  iii_hset_many(X.g.key, X.g.fields)
end
local delay = tonumber(ARGV[4])
local due = 0
if delay > 0 then due = iii_now_ms() + delay end
local n = 0
for i = 10, #ARGV, 3 do
  local q = ns .. ":" .. ARGV[i]
  redis.call("HSET", q .. ".msgs", ARGV[i + 1], ARGV[i + 2])
  if delay > 0 then
    redis.call("ZADD", q .. ".delayed", due, ARGV[i + 1])
    redis.call("ZADD", ns .. ":__delayed__", "LT", due, ARGV[i])
  else
    redis.call("RPUSH", q, ARGV[i + 1])
    iii_wake(q .. ".wake")
  end
  n = n + 1
end
if delay > 0 and n > 0 then
  iii_wake(ns .. ":__delayed__.wake")
end
if ARGV[6] ~= "" then redis.call("SET", ARGV[6], ARGV[8]) end
iii_settle(E)
iii_trim(E)
return n
