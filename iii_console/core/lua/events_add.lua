-- Append a batch of events to the event stream and add their counts to the
-- cluster-wide metric hashes, in one atomic call.
-- KEYS: stream, metrics counts hash, metrics durations hash
-- ARGV: maxlen, n_events, then per event (n_fields*2, field, value, ...),
--       then n_counts, (field, int)..., n_buckets, (field, int)..., n_sums, (field, float)...
-- One script call instead of a MULTI of N XADDs: the client packs and parses one
-- command per batch, and the stream is trimmed once per batch, not per entry.
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[i])
  redis.call("XADD", KEYS[1], "*", unpack(ARGV, i + 1, i + n))
  i = i + 1 + n
end
redis.call("XTRIM", KEYS[1], "MAXLEN", "~", ARGV[1])
for _, spec in ipairs({{KEYS[2], "HINCRBY"}, {KEYS[3], "HINCRBY"}, {KEYS[3], "HINCRBYFLOAT"}}) do
  local n = tonumber(ARGV[i])
  for j = i + 1, i + 2 * n, 2 do
    redis.call(spec[2], spec[1], ARGV[j], ARGV[j + 1])
  end
  i = i + 1 + 2 * n
end
return tonumber(ARGV[2])
