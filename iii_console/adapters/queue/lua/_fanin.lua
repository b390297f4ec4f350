-- Fan-in (prepended, after _events.lua, to the scripts that settle a message:
-- ack_many.lua and dead.lua). A group's record is a hash written with its children
-- by enqueue.lua (producer.py builds it):
--   id, total, pending, ok, failed, dead, trace_id, ids (JSON list),
--   c:<child message id> = "pending" | "ok" | "failed" | "dead",
--   done (JSON list of [queue, redis id, body]: the completion's copies, whose
--   body holds "__III_GROUP_RESULT__" where the result goes),
--   ev ({s, st}: their message.enqueued events and counters).
-- A child is settled once (its c: field leaves "pending" once), in the same
-- script as its ack or dead-lettering; the settle that takes pending to 0
-- enqueues the completion, so it is enqueued exactly once, whoever dies when.

local function iii_json_list(t)
  if #t == 0 then return "[]" end
  return cjson.encode(t)
end

local function iii_fanin(ns, gkey, mid, outcome, E)
  if gkey == nil or gkey == "" then return 0 end
  if redis.call("HGET", gkey, "c:" .. mid) ~= "pending" then return 0 end
  redis.call("HSET", gkey, "c:" .. mid, outcome)
  redis.call("HINCRBY", gkey, outcome, 1)
  if redis.call("HINCRBY", gkey, "pending", -1) > 0 then return 1 end
  local g = redis.call("HMGET", gkey, "id", "total", "ok", "failed", "dead", "ids", "done", "ev", "trace_id")
  local failed_ids, dead_ids = {}, {}
  local all = redis.call("HGETALL", gkey)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == "c:" then
      if all[i + 1] == "failed" then table.insert(failed_ids, string.sub(all[i], 3))
      elseif all[i + 1] == "dead" then table.insert(dead_ids, string.sub(all[i], 3)) end
    end
  end
  local summary = '{"group_id":' .. cjson.encode(g[1]) .. ',"total":' .. g[2] .. ',"ok":' .. (g[3] or "0") ..
    ',"failed":' .. (g[4] or "0") .. ',"dead":' .. (g[5] or "0")
  local result = summary .. ',"children":' .. g[6] .. ',"failed_ids":' .. iii_json_list(failed_ids) ..
    ',"dead_ids":' .. iii_json_list(dead_ids) .. '}'
  summary = summary .. '}'
  for _, c in ipairs(cjson.decode(g[7])) do
    local q = ns .. ":" .. c[1]
    redis.call("HSET", q .. ".msgs", c[2], iii_fill(c[3], '"__III_GROUP_RESULT__"', result))
    redis.call("RPUSH", q, c[2])
    iii_wake(q .. ".wake")
  end
  local now = iii_now_ms()
  if E ~= nil then
    local ev = cjson.decode(g[8])
    for _, f in ipairs(ev.s) do
      for j = 2, #f, 2 do f[j] = iii_fill(f[j], '"__III_GROUP_RESULT__"', summary) end
    end
    iii_write(E, ev.s, ev.st)
    local f = {"type", "group.completed", "ts", tostring(now)}
    if g[9] and g[9] ~= "" then table.insert(f, "trace_id"); table.insert(f, g[9]) end
    table.insert(f, "data"); table.insert(f, summary)
    redis.call("XADD", E.k[1], "*", unpack(f))
  end
  redis.call("HSET", gkey, "completed_ms", now)
  redis.call("HDEL", gkey, "done", "ev")
  redis.call("PEXPIRE", gkey, 7 * 86400000)
  return 2
end
