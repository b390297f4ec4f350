-- Compare-and-set one state key and record the change, atomically.
--
-- KEYS: hash, groups_set, changes_stream, events_stream, watched_groups_set
-- ARGV: field, expected, new, group, changes_maxlen, events_maxlen,
--       trace_id, ts, event_data, E (the prelude's events argument with only p/pt:
--       what the writer's process still buffered, or ""), then name/value pairs of
--       the event's other fields (step, message_id, worker; an empty value is left out)
-- expected/new use "\0" for "absent" (expected: key must not exist; new: delete).
-- Returns {1} when written, {2} when new equals current (no change), and
-- {0, current} when the current value is not `expected` (current is false when
-- absent): the caller recomputes from it and retries without another read.
-- E's events are written in every case, before the change's own event.
local ABSENT = "\0"
local field, expected, new = ARGV[1], ARGV[2], ARGV[3]
local E = iii_decode(ARGV[10])
local err = iii_checks(iii_event_keys(E))
if err then return err end
local cur = redis.call("HGET", KEYS[1], field)
if E ~= nil then
  iii_pre(E)
  iii_trim(E)
end
if cur == false then
  if expected ~= ABSENT then return {0, false} end
elseif cur ~= expected then
  return {0, cur}
end
if (cur == false and new == ABSENT) or cur == new then return {2} end

if new == ABSENT then
  redis.call("HDEL", KEYS[1], field)
  if redis.call("HLEN", KEYS[1]) == 0 then redis.call("SREM", KEYS[2], ARGV[4]) end
else
  redis.call("HSET", KEYS[1], field, new)
  redis.call("SADD", KEYS[2], ARGV[4])
end

local old_json = cur or "null"
local new_json = (new == ABSENT) and "null" or new
-- The trigger record (full old and new values) only for groups a state step
-- watches ("*" in the set: a trigger without a group watches them all): nothing
-- reads the others, and large values would fill Redis. With no watched set at
-- all (Redis lost its data and no process has registered its groups again yet;
-- a registered set always holds at least ""), record every change rather than
-- miss one a step watches: dispatchers drop the rest.
if redis.call("SISMEMBER", KEYS[5], ARGV[4]) == 1 or redis.call("SISMEMBER", KEYS[5], "*") == 1
    or redis.call("EXISTS", KEYS[5]) == 0 then
  redis.call("XADD", KEYS[3], "MAXLEN", "~", ARGV[5], "*",
    "group", ARGV[4], "key", field, "old", old_json, "new", new_json,
    "trace_id", ARGV[7], "ts", ARGV[8])
end
local ev = {"type", "state.changed", "ts", ARGV[8], "data", ARGV[9]}
if ARGV[7] ~= "" then table.insert(ev, "trace_id"); table.insert(ev, ARGV[7]) end
for i = 11, #ARGV - 1, 2 do
  if ARGV[i + 1] ~= "" then table.insert(ev, ARGV[i]); table.insert(ev, ARGV[i + 1]) end
end
redis.call("XADD", KEYS[4], "MAXLEN", "~", ARGV[6], "*", unpack(ev))
return {1}
