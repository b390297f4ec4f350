-- Acknowledge a group of processed messages in one call (the acks that
-- arrived while the previous call was on the wire): each is released, its
-- body and delivery count forgotten and its message.processed written only if
-- this worker still holds it (its SREM); a fan-in child also settles its group.
-- ARGV: namespace, worker_id, events (E, MessagePack; "" for none), then four per message:
--       queue_name, redis_message_id, group key ("" for none), message id.
-- E is _events.lua's object with, instead of s/st, a: one {s = events,
-- c = [counts field, n, ...]} per message, in ARGV order. p (what the process
-- had buffered before these settles) is written first, whatever each decides;
-- the counters of the settles that applied are summed and added once per field.
-- Returns one 1 (settled) or 0 (not held by this worker) per message.
-- Type checks: every key the call can write, before the first write.
local E = iii_unpack(ARGV[3])
local ns, wid = ARGV[1], ARGV[2]
local len = iii_stream_len(E)
local checks, seen = iii_event_keys(E, {}, true), {}
for i = 4, #ARGV, 4 do
  local q = ns .. ":" .. ARGV[i]
  local keys = {
    {ns .. ":__acks__." .. wid .. "." .. ARGV[i], "set"}, {q .. ".msgs", "hash"}, {q .. ".deliveries", "hash"}, {ARGV[i + 2], "hash"}
  }
  for _, kt in ipairs(keys) do
    if kt[1] ~= "" and not seen[kt[1]] then
      seen[kt[1]] = true
      table.insert(checks, kt)
    end
  end
end
local err = iii_checks(checks)
if err then return err end
local added = iii_pre(E)
local out, counts = {}, {}
for i = 4, #ARGV, 4 do
  local r = 0
  if redis.call("SREM", ns .. ":__acks__." .. wid .. "." .. ARGV[i], ARGV[i + 1]) > 0 then
    r = 1
    local q = ns .. ":" .. ARGV[i]
    redis.call("HDEL", q .. ".msgs", ARGV[i + 1])
    redis.call("HDEL", q .. ".deliveries", ARGV[i + 1])
    if E ~= nil then
      local a = E.a[(i - 4) / 4 + 1]
      for _, fields in ipairs(a.s) do
        redis.call("XADD", E.k[1], "*", unpack(fields))
        added = added + 1
      end
      for j = 1, #a.c, 2 do counts[a.c[j]] = (counts[a.c[j]] or 0) + a.c[j + 1] end
    end
    iii_fanin(ns, ARGV[i + 2], ARGV[i + 3], "ok", E)
  end
  out[#out + 1] = r
end
if E ~= nil and E.k[2] ~= "" then
  for field, n in pairs(counts) do redis.call("HINCRBY", E.k[2], field, n) end
end
iii_trim_after(E, len, added)
return out
