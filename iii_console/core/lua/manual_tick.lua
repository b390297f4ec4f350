-- Put one message at the tail of a queue with its events (a cron step run by
-- hand: `iii-console cron run`, the console's Cron view); _events.lua is prepended.
-- ARGV: namespace, queue_name, redis_message_id, encoded_message, events (E)
local E = iii_decode(ARGV[5])
local q = ARGV[1] .. ":" .. ARGV[2]
local err = iii_checks(iii_event_keys(E, {{q .. ".msgs", "hash"}, {q, "list"}, {q .. ".wake", "list"}}))
if err then return err end
iii_pre(E)
redis.call("HSET", q .. ".msgs", ARGV[3], ARGV[4])
redis.call("RPUSH", q, ARGV[3])
iii_wake(q .. ".wake")
iii_settle(E)
iii_trim(E)
return 1
