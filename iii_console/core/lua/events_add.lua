-- Append a batch of events to the event stream and add their counts to the
-- cluster-wide metric hashes, in one atomic call.
-- KEYS: stream, metrics counts hash, metrics durations hash
-- ARGV[1]: maxlen
-- ARGV[2]: JSON [[field, value, field, value, ...], ...], one array per event
-- ARGV[3]: JSON [[counts field, n, ...], [durations field, n, ...], [durations field, float, ...]]
-- One script call with one JSON argument instead of a MULTI of N XADDs: the
-- client packs one string per batch instead of ~20 per event, and the stream
-- is trimmed once per batch, not per entry.
local events = cjson.decode(ARGV[2])
for _, fields in ipairs(events) do
  redis.call("XADD", KEYS[1], "*", unpack(fields))
end
redis.call("XTRIM", KEYS[1], "MAXLEN", "~", ARGV[1])
local tables = cjson.decode(ARGV[3])
local ops = {{KEYS[2], "HINCRBY"}, {KEYS[3], "HINCRBY"}, {KEYS[3], "HINCRBYFLOAT"}}
for t, spec in ipairs(ops) do
  local kv = tables[t] or {}
  for j = 1, #kv, 2 do
    redis.call(spec[2], spec[1], kv[j], kv[j + 1])
  end
end
return #events
