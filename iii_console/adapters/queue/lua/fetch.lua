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
-- ahead of a backlog it should wait behind.
for i = 5, #ARGV do
  if redis.call("LLEN", ARGV[1] .. ":" .. ARGV[i]) > 0 then return -1 end
end
local q = ARGV[1] .. ":" .. ARGV[2]
local acks = ARGV[1] .. ":__acks__." .. ARGV[3] .. "." .. ARGV[2]
local out = {}
for _ = 1, tonumber(ARGV[4]) do
  local id = redis.call("LPOP", q)
  if not id then break end
  redis.call("SADD", acks, id)
  table.insert(out, id)
  table.insert(out, redis.call("HGET", q .. ".msgs", id))
  table.insert(out, redis.call("HINCRBY", q .. ".deliveries", id, 1))
end
return out
