-- Return the messages a worker held in one queue to the head of that queue
-- (they have waited longest, so they run next rather than behind a backlog),
-- each with a message.redelivered event naming the worker and why.
-- Used for a worker that died (the sweep, or its supervisor at once) and for
-- the handlers a stopping worker had to abandon.
-- ARGV: namespace, queue_name, worker_id, reason, by, events (E: stream keys),
--       the worker's name as its events give it.
-- Returns how many were requeued.
local ns, qn = ARGV[1], ARGV[2]
local E = iii_decode(ARGV[6])
local acks = ns .. ":__acks__." .. ARGV[3] .. "." .. qn
local q = ns .. ":" .. qn
local ids = redis.call("SMEMBERS", acks)
local n = 0
for _, id in ipairs(ids) do
  local body = redis.call("HGET", q .. ".msgs", id)
  if body then
    redis.call("LPUSH", q, id)
    iii_redelivered(E, qn, body, redis.call("HGET", q .. ".deliveries", id), ARGV[3], ARGV[7], ARGV[4], ARGV[5])
    n = n + 1
  end
end
redis.call("DEL", acks)
if n > 0 then
  iii_wake(q .. ".wake")
  iii_trim(E)
end
return n
