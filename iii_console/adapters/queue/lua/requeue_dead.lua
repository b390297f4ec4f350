-- Return a dead worker's in-flight messages of one queue to the head of that
-- queue: they have waited longest, so they run next rather than behind a backlog.
-- ARGV: namespace, queue_name, dead_worker_id. Returns how many were requeued.
local ns, qn = ARGV[1], ARGV[2]
local acks = ns .. ":__acks__." .. ARGV[3] .. "." .. qn
local q = ns .. ":" .. qn
local ids = redis.call("SMEMBERS", acks)
local n = 0
for _, id in ipairs(ids) do
  if redis.call("HEXISTS", q .. ".msgs", id) == 1 then
    redis.call("LPUSH", q, id)
    n = n + 1
  end
end
redis.call("DEL", acks)
if n > 0 then
  redis.call("RPUSH", q .. ".wake", "1")
  redis.call("LTRIM", q .. ".wake", -64, -1)
end
return n
