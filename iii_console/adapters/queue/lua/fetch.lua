-- Fetch up to N messages, recording them as in flight for this worker.
-- ARGV: namespace, queue_name, worker_id, n, then the names of the queues of
--       higher priority for the same subscription (none for high or a delay queue).
-- Returns a flat list id1, data1, deliveries1, id2, ...; data is false when
-- the body is missing. Unlike stock Dramatiq it returns ids (so a body that
-- cannot be decoded can still be acked and quarantined) and counts deliveries
-- (so a message that kills its worker every time is dead-lettered, not
-- redelivered forever).
-- Returns -1 and fetches nothing while a higher-priority queue has messages
-- waiting: a lower-priority message fetched now would sit in the worker's
-- memory and run whenever the higher consumer is between two fetches, i.e.
-- ahead of a backlog it should wait behind. It then leaves a mark on that
-- queue ({queue}.held: this queue and worker), and the fetch that drains the
-- higher queue drops a token on the wake list of each queue marked, once per
-- worker, so the held-back consumers look again at once instead of polling.
local ns = ARGV[1]
for i = 5, #ARGV do
  local h = ns .. ":" .. ARGV[i]
  if redis.call("LLEN", h) > 0 then
    redis.call("SADD", h .. ".held", ARGV[2] .. "\n" .. ARGV[3])
    redis.call("PEXPIRE", h .. ".held", 60000)
    return -1
  end
end
local q = ns .. ":" .. ARGV[2]
local acks = ns .. ":__acks__." .. ARGV[3] .. "." .. ARGV[2]
local out = {}
local n = tonumber(ARGV[4])
local drained = false
for _ = 1, n do
  local id = redis.call("LPOP", q)
  if not id then drained = true; break end
  redis.call("SADD", acks, id)
  table.insert(out, id)
  table.insert(out, redis.call("HGET", q .. ".msgs", id))
  table.insert(out, redis.call("HINCRBY", q .. ".deliveries", id, 1))
end
if drained or redis.call("LLEN", q) == 0 then
  local held = redis.call("SMEMBERS", q .. ".held")
  if #held > 0 then
    for _, m in ipairs(held) do
      local wake = ns .. ":" .. string.match(m, "^(.-)\n") .. ".wake"
      redis.call("RPUSH", wake, "1")
      redis.call("LTRIM", wake, -64, -1)
    end
    redis.call("DEL", q .. ".held")
  end
end
return out
