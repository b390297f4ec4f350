-- Move one dead-letter entry back onto its queue as a new message, atomically,
-- with its message.replayed event (lua/_events.lua is prepended).
-- ARGV: namespace, queue_name, redis_message_id, encoded_message,
--       dlq_entries_key, dlq_index_key, entry_id, events (E)
-- Returns 1, or 0 if the entry is gone (replayed or purged meanwhile):
-- then nothing is enqueued, so a double replay cannot run a message twice.
local E = iii_decode(ARGV[8])
local q_ = ARGV[1] .. ":" .. ARGV[2]
local err = iii_checks(iii_event_keys(E, {{q_ .. ".msgs", "hash"}, {q_, "list"}, {q_ .. ".wake", "list"},
  {ARGV[5], "hash"}, {ARGV[6], "zset"}}))
if err then return err end
iii_pre(E)
if redis.call("HEXISTS", ARGV[5], ARGV[7]) == 0 then
  iii_trim(E)
  return 0
end
local q = ARGV[1] .. ":" .. ARGV[2]
redis.call("HSET", q .. ".msgs", ARGV[3], ARGV[4])
redis.call("RPUSH", q, ARGV[3])
iii_wake(q .. ".wake")
redis.call("HDEL", ARGV[5], ARGV[7])
redis.call("ZREM", ARGV[6], ARGV[7])
iii_settle(E)
iii_trim(E)
return 1
