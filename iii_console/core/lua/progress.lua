-- Keep the latest progress of a trace and write its progress event, in one call.
-- ARGV: progress_key, value_json, ttl_ms, events (E: the progress event).
local E = iii_decode(ARGV[4])
local err = iii_checks(iii_event_keys(E, {{ARGV[1], "string"}}))
if err then return err end
iii_pre(E)
redis.call("SET", ARGV[1], ARGV[2], "PX", ARGV[3])
iii_settle(E)
iii_trim(E)
return 1
