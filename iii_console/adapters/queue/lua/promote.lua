-- Move delayed messages that are due (by Redis's clock) onto their queues.
-- ARGV: namespace, index_key (`__delayed__`: queue name -> its earliest due
--       time), max messages to move.
-- Returns {moved, ms until the next delayed message is due, or -1 for none}.
-- One script, so any number of workers can promote at once: each due message
-- is moved once, and nothing is held in any worker's memory while it waits.
local ns, index = ARGV[1], ARGV[2]
local limit = tonumber(ARGV[3])
local now = iii_now_ms()
local moved = 0
for _, qn in ipairs(redis.call("ZRANGEBYSCORE", index, "-inf", now, "LIMIT", 0, 100)) do
  local q = ns .. ":" .. qn
  local ids = redis.call("ZRANGEBYSCORE", q .. ".delayed", "-inf", now, "LIMIT", 0, limit - moved)
  local pushed = 0
  for _, id in ipairs(ids) do
    redis.call("ZREM", q .. ".delayed", id)
    if redis.call("HEXISTS", q .. ".msgs", id) == 1 then
      redis.call("RPUSH", q, id)
      pushed = pushed + 1
    end
  end
  if pushed > 0 then
    iii_wake(q .. ".wake")
  end
  moved = moved + pushed
  local first = redis.call("ZRANGE", q .. ".delayed", 0, 0, "WITHSCORES")
  if #first == 0 then
    redis.call("ZREM", index, qn)
  else
    redis.call("ZADD", index, first[2], qn)
  end
  if moved >= limit then break end
end
local nxt = redis.call("ZRANGE", index, 0, 0, "WITHSCORES")
if #nxt == 0 then return {moved, -1} end
return {moved, math.max(0, tonumber(nxt[2]) - now)}
