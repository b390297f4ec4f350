-- Admit a message to run under its key's throttle, or say how long it must wait.
-- ARGV: window_key ("" for no rate limit), limit, period_ms,
--       running_key ("" for no per-key concurrency), concurrency, member
--       (worker_id|message_id), heartbeats zset, heartbeat_timeout_ms.
-- Returns {0, now} (admitted: its start is recorded in the window, as member|now,
-- and it holds a running slot), {1, wait_ms} (the key's running slots are taken) or
-- {2, wait_ms} (the key's window is full; wait_ms until its oldest start leaves it).
-- A running slot whose worker has no recent heartbeat (Redis clock) is freed,
-- so a killed worker holds none for longer than heartbeat_timeout.
-- Nothing is written unless the message is admitted.
local win, running = ARGV[1], ARGV[4]
for _, kt in ipairs({{win, "zset"}, {running, "zset"}}) do
  if kt[1] ~= "" then
    local t = redis.call("TYPE", kt[1])["ok"]
    if t ~= "none" and t ~= kt[2] then return redis.error_reply("WRONGTYPE " .. kt[1] .. " holds a " .. t) end
  end
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if running ~= "" then
  local cutoff = now - tonumber(ARGV[8])
  for _, m in ipairs(redis.call("ZRANGE", running, 0, -1)) do
    local wid = string.match(m, "^(.*)|[^|]*$")
    local hb = wid and redis.call("ZSCORE", ARGV[7], wid)
    if not hb or tonumber(hb) < cutoff then redis.call("ZREM", running, m) end
  end
  if redis.call("ZCARD", running) >= tonumber(ARGV[5]) then return {1, 100} end
end
if win ~= "" then
  local wait = iii_window_admit(win, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[6] .. "|" .. now, now)
  if wait then return {2, wait} end
end
if running ~= "" then redis.call("ZADD", running, now, ARGV[6]) end
return {0, now}
