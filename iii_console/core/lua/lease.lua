-- Leases with fencing tokens (core/lease.py). ARGV[1] is the operation:
--   acquire lock_key fence_key ttl_ms     -> the new token, or 0 if the lock is held
--   extend  lock_key token ttl_ms         -> 1, or 0 if the lock is no longer this token's
--   release lock_key token                -> 1, or 0 (a lease that expired never deletes its successor's lock)
--   fence   resource_key token tokens_key -> 1 if token is the newest that touched the resource and no newer
--                                            lease of its name was taken since (it is recorded), 0 otherwise:
--                                            the late writer is refused, whether or not its successor fenced yet
--   held    lock_key token                -> 1 if the lock is still this token's
local op, key = ARGV[1], ARGV[2]
-- A key of another type than the string every operation reads or writes: the error names it.
local function wrong_type(k)
  local t = redis.call("TYPE", k)["ok"]
  if t ~= "none" and t ~= "string" then return redis.error_reply("WRONGTYPE " .. k .. " holds a " .. t) end
  return nil
end
local err = wrong_type(key)
if err then return err end
if op == "acquire" then
  if redis.call("EXISTS", key) == 1 then return 0 end
  local token = redis.call("INCR", ARGV[3])
  redis.call("SET", key, token, "PX", ARGV[4])
  return token
elseif op == "extend" then
  if redis.call("GET", key) ~= ARGV[3] then return 0 end
  redis.call("PEXPIRE", key, ARGV[4])
  return 1
elseif op == "release" then
  if redis.call("GET", key) ~= ARGV[3] then return 0 end
  redis.call("DEL", key)
  return 1
elseif op == "fence" then
  err = wrong_type(ARGV[4])
  if err then return err end
  local seen = tonumber(redis.call("GET", key) or "0")
  local issued = tonumber(redis.call("GET", ARGV[4]) or "0")
  if tonumber(ARGV[3]) < seen or tonumber(ARGV[3]) < issued then return 0 end
  redis.call("SET", key, ARGV[3])
  return 1
elseif op == "held" then
  return redis.call("GET", key) == ARGV[3] and 1 or 0
end
return redis.error_reply("unknown lease operation " .. tostring(op))
