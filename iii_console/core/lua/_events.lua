-- Shared prelude of the scripts that move messages (prepended by scripts.py).
-- The events of a transition are written by the script that makes it, with
-- their metric counters: they land exactly when the transition does, and a
-- refused transition (this worker no longer owns the message) writes none.
--
-- E is a JSON object (or "" for no events):
--   k: [event stream, counts hash, durations hash], m: stream maxlen,
--   p: events written whatever the transition does (what the process had
--      buffered before it: a message's start, its handler's logs),
--   pt: their counter tables, s: the transition's own events, st: theirs.
-- A table is [[counts field, n, ...], [durations field, n, ...], [durations field, float, ...]].
-- Redis does not undo a script's writes when a later command in it fails, so
-- every script first checks that each key it will write is absent or of the
-- type it writes (a key of the wrong type is the one error left once Redis
-- has accepted the call): a transition then happens whole or not at all.
-- A key that passed a check is not asked about again in the same call: a script writes
-- only keys it checked, of the type it checked them for, so the answer cannot change.
local iii_passed = {}
local function iii_check(key, want)
  if iii_passed[key] == want then return nil end
  local t = redis.call("TYPE", key)["ok"]
  if t ~= "none" and t ~= want then
    return redis.error_reply("WRONGTYPE " .. key .. " holds a " .. t .. ", not a " .. want)
  end
  iii_passed[key] = want
  return nil
end

-- Check a list of {key, type} pairs; returns the first error reply, or nil.
-- An empty key (an optional one not given, e.g. no fan-in group) is skipped.
local function iii_checks(pairs_)
  for _, kt in ipairs(pairs_) do
    if kt[1] ~= "" then
      local err = iii_check(kt[1], kt[2])
      if err then return err end
    end
  end
  return nil
end

local function iii_decode(raw)
  if raw == nil or raw == "" then return nil end
  return cjson.decode(raw)
end

-- iii_decode for an events argument sent as MessagePack (StreamSink.payload_many, every
-- processed message's settle): cmsgpack unpacks it in four fifths of cjson's time.
local function iii_unpack(raw)
  if raw == nil or raw == "" then return nil end
  return cmsgpack.unpack(raw)
end

-- The event keys of E, for iii_checks. With no_stream, not the stream: the
-- caller reads its length first (iii_stream_len), which fails the same way.
local function iii_event_keys(E, out, no_stream)
  out = out or {}
  if E ~= nil then
    if not no_stream then table.insert(out, {E.k[1], "stream"}) end
    if E.k[2] ~= "" then table.insert(out, {E.k[2], "hash"}) end
    if E.k[3] ~= "" and E.pt and E.pt[2] and #E.pt[2] > 0 then table.insert(out, {E.k[3], "hash"}) end
  end
  return out
end

local function iii_write(E, events, tables)
  if E == nil or events == nil then return 0 end
  local n = 0
  for _, fields in ipairs(events) do
    redis.call("XADD", E.k[1], "*", unpack(fields))
    n = n + 1
  end
  if tables then
    local ops = {{E.k[2], "HINCRBY"}, {E.k[3], "HINCRBY"}, {E.k[3], "HINCRBYFLOAT"}}
    for t, spec in ipairs(ops) do
      if spec[1] == "" then break end
      local kv = tables[t] or {}
      for j = 1, #kv, 2 do redis.call(spec[2], spec[1], kv[j], kv[j + 1]) end
    end
  end
  return n
end

local function iii_pre(E)
  if E == nil then return 0 end
  return iii_write(E, E.p, E.pt)
end

local function iii_settle(E)
  if E == nil then return 0 end
  return iii_write(E, E.s, E.st)
end

-- Trim the stream back to about its cap, but only once it is well past it: a
-- trim costs as much as the rest of a settle, and settles are one per message.
local function iii_trim(E)
  if E ~= nil and redis.call("XLEN", E.k[1]) > E.m + 1000 then
    redis.call("XTRIM", E.k[1], "MAXLEN", "~", E.m)
  end
end

-- The stream's length before a settle writes anything (0 with no events). It
-- is the stream's type check too: XLEN fails on a key of another type, and
-- nothing has been written yet when it runs.
local function iii_stream_len(E)
  if E == nil then return 0 end
  return redis.call("XLEN", E.k[1])
end

-- iii_trim for a settle that read the length first and then added `added` entries.
local function iii_trim_after(E, len, added)
  if E ~= nil and len + added > E.m + 1000 then
    redis.call("XTRIM", E.k[1], "MAXLEN", "~", E.m)
  end
end

-- s with the first plain occurrence of placeholder replaced by value.
local function iii_fill(s, placeholder, value)
  local a, b = string.find(s, placeholder, 1, true)
  if not a then return s end
  return string.sub(s, 1, a - 1) .. value .. string.sub(s, b + 1)
end

-- HSET of a flat {field, value, ...} list of any length: Lua's unpack takes at most ~8,000
-- values (a fan-in group's record has two per child), so it goes 1,000 pairs a call.
local function iii_hset_many(key, fields)
  for i = 1, #fields, 2000 do
    redis.call("HSET", key, unpack(fields, i, math.min(i + 1999, #fields)))
  end
end

-- Drop a token on a wake list (a queue's, or `__delayed__.wake`): whoever blocks
-- on it (an idle consumer, a promoter) looks at once. Capped, so it never grows.
local function iii_wake(key)
  redis.call("RPUSH", key, "1")
  redis.call("LTRIM", key, -64, -1)
end

local function iii_now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- One message.redelivered event (and its counter) for a message a sweep or a
-- supervisor returns to its queue: the worker that held it is gone (or gave
-- it up at a stop), so this is the only event that can say so.
local function iii_redelivered(E, queue_name, body, deliveries, worker_id, held_by, reason, by)
  if E == nil then return end
  local topic, step = string.match(queue_name, "^(.*)%-%-(.-)%-%-%w+$")
  local ok, m = pcall(cjson.decode, body)
  local mid, trace = "", ""
  if ok and type(m) == "table" then
    mid = tostring(m.message_id or "")
    if type(m.options) == "table" then
      trace = tostring(m.options.trace_id or "")
      if m.options.topic then topic = tostring(m.options.topic) end
    end
  end
  local f = {"type", "message.redelivered", "ts", tostring(iii_now_ms())}
  if trace ~= "" then table.insert(f, "trace_id"); table.insert(f, trace) end
  if mid ~= "" then table.insert(f, "message_id"); table.insert(f, mid) end
  if step then table.insert(f, "step"); table.insert(f, step) end
  if topic then table.insert(f, "topic"); table.insert(f, topic) end
  table.insert(f, "queue"); table.insert(f, queue_name)
  if held_by == nil or held_by == "" then held_by = worker_id end
  table.insert(f, "worker"); table.insert(f, held_by)
  table.insert(f, "data")
  table.insert(f, cjson.encode({reason = reason, deliveries = tonumber(deliveries) or 0, by = by, worker_id = worker_id}))
  redis.call("XADD", E.k[1], "*", unpack(f))
  if E.k[2] ~= "" then
    redis.call("HINCRBY", E.k[2], "message.redelivered|" .. (topic or "") .. "|" .. (step or ""), 1)
  end
end
