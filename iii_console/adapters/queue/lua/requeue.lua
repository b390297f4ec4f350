-- Give back messages this worker fetched but never started (a graceful stop,
-- a consumer that closes): to the head of their queue, where they were, and
-- with their delivery count undone, since no handler ran. A stop, however
-- often it happens, therefore never brings a message closer to max_deliveries.
-- ARGV: namespace, queue_name, worker_id, then redis message ids in fetch order.
-- Returns how many were given back (only those this worker still held).
local ns, qn = ARGV[1], ARGV[2]
local q = ns .. ":" .. qn
local acks = ns .. ":__acks__." .. ARGV[3] .. "." .. qn
local n = 0
for i = #ARGV, 4, -1 do
  local id = ARGV[i]
  if redis.call("SREM", acks, id) > 0 then
    if redis.call("HEXISTS", q .. ".msgs", id) == 1 then
      redis.call("LPUSH", q, id)
      if redis.call("HINCRBY", q .. ".deliveries", id, -1) <= 0 then
        redis.call("HDEL", q .. ".deliveries", id)
      end
      n = n + 1
    end
  end
end
if n > 0 then
  iii_wake(q .. ".wake")
end
return n
