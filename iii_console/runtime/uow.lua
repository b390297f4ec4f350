-- A unit of work: a handler's state writes and enqueues, applied together in one atomic call
-- (runtime/uow.py). Follows the prelude (_events.lua) and iii_enqueue (enqueue.lua as a function).
--
-- ARGV: groups_set, changes_stream, events_stream, watched_set, changes_maxlen, events_maxlen,
--       trace_id, step, message_id, worker, E (the events the request held back: _events.lua's
--       argument with only p/pt, or ""), then the operations in the order the handler made them:
--   "s", hash, field, expected, new, group, ts, event_data    a state write, compare-and-set as
--        state_cas.lua ("\0" for absent); expected is what the handler's run saw (or guessed)
--   "e", expect, expect_value, n, then n arguments of enqueue.lua    an enqueue; expect is ""
--        (none), "absent" (its dedup key must not exist) or "value" (it must hold expect_value)
-- Every expectation and every key's type is checked before anything is written. When one does
-- not hold, nothing is written and the reply is {0, i, current, ...}: the 1-based number of each
-- such operation and the value it found (false: absent). Otherwise every operation is applied in
-- order, each state write that changes its value with its state.changed event (and its trigger
-- record), each enqueue with its events, and the reply is {1}. The held-back events (E) are
-- written first, and only then: a refused call writes none, and the caller sends them again.
local ABSENT = "\0"
local groups, changes, events, watched = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local trace, step, mid, worker = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local E = iii_decode(ARGV[11])

local ops = {}
local i = 12
while i <= #ARGV do
  if ARGV[i] == "s" then
    table.insert(ops, {"s", i + 1})
    i = i + 8
  elseif ARGV[i] == "e" then
    local n = tonumber(ARGV[i + 3])
    local a = {}
    for j = 1, n do a[j] = ARGV[i + 3 + j] end
    table.insert(ops, {"e", i + 1, a})
    i = i + 4 + n
  else
    return redis.error_reply("ERR unit of work: unknown operation " .. tostring(ARGV[i]))
  end
end

-- Check: types first, then each expectation against the value the earlier operations leave.
local checks = {}
local any_state = false
for _, op in ipairs(ops) do
  if op[1] == "s" then
    any_state = true
    table.insert(checks, {ARGV[op[2]], "hash"})
  end
end
if any_state then
  table.insert(checks, {groups, "set"})
  table.insert(checks, {changes, "stream"})
  table.insert(checks, {events, "stream"})
  table.insert(checks, {watched, "set"})
end
iii_event_keys(E, checks)
local err = iii_checks(checks)
if err then return err end
for _, op in ipairs(ops) do
  if op[1] == "e" then
    -- op[4]: what the check decoded, so that applying it decodes and checks nothing again
    err, op[4] = iii_enqueue(op[3], true)
    if err then return err end
  end
end

local sim = {}
local bad = {0}
for n, op in ipairs(ops) do
  local j = op[2]
  if op[1] == "s" then
    local id = ARGV[j] .. "\0" .. ARGV[j + 1]
    local cur = sim[id]
    if cur == nil then cur = redis.call("HGET", ARGV[j], ARGV[j + 1]) end
    if (cur == false and ARGV[j + 2] ~= ABSENT) or (cur ~= false and cur ~= ARGV[j + 2]) then
      table.insert(bad, n)
      table.insert(bad, cur)
    end
    if ARGV[j + 3] == ABSENT then sim[id] = false else sim[id] = ARGV[j + 3] end
  elseif ARGV[j] ~= "" then
    local key = op[3][2]
    local id = "\0dedup\0" .. key
    local cur = sim[id]
    if cur == nil then cur = redis.call("GET", key) end
    if (ARGV[j] == "absent" and cur ~= false) or (ARGV[j] == "value" and cur ~= ARGV[j + 1]) then
      table.insert(bad, n)
      table.insert(bad, cur)
    end
    if cur == false then sim[id] = op[3][9] ~= "" and cjson.decode(op[3][9]).v or "1" else sim[id] = cur end
  end
end
if #bad > 1 then return bad end

-- Apply: the held-back events, then the operations in the handler's order.
iii_pre(E)
for _, op in ipairs(ops) do
  local j = op[2]
  if op[1] == "e" then
    iii_enqueue(op[3], false, op[4])
  else
    local hash, field, new, group = ARGV[j], ARGV[j + 1], ARGV[j + 3], ARGV[j + 4]
    local cur = redis.call("HGET", hash, field)
    if not ((cur == false and new == ABSENT) or cur == new) then
      if new == ABSENT then
        redis.call("HDEL", hash, field)
        if redis.call("HLEN", hash) == 0 then redis.call("SREM", groups, group) end
      else
        redis.call("HSET", hash, field, new)
        redis.call("SADD", groups, group)
      end
      local ts = ARGV[j + 5]
      if redis.call("SISMEMBER", watched, group) == 1 or redis.call("SISMEMBER", watched, "*") == 1
          or redis.call("EXISTS", watched) == 0 then
        redis.call("XADD", changes, "MAXLEN", "~", ARGV[5], "*",
          "group", group, "key", field, "old", cur or "null", "new", (new == ABSENT) and "null" or new,
          "trace_id", trace, "ts", ts)
      end
      local ev = {"type", "state.changed", "ts", ts, "data", ARGV[j + 6]}
      if trace ~= "" then table.insert(ev, "trace_id"); table.insert(ev, trace) end
      if step ~= "" then table.insert(ev, "step"); table.insert(ev, step) end
      if mid ~= "" then table.insert(ev, "message_id"); table.insert(ev, mid) end
      if worker ~= "" then table.insert(ev, "worker"); table.insert(ev, worker) end
      redis.call("XADD", events, "MAXLEN", "~", ARGV[6], "*", unpack(ev))
    end
  end
end
iii_trim(E)
return {1}
