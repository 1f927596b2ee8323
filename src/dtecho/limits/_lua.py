"""The Lua scripts of :class:`~dtecho.limits.RedisLimiter`: one per admit, one per settle.

They mirror :mod:`dtecho.limits._rules` and :class:`~dtecho.limits.LocalLimiter` formula for
formula, in microseconds of the Redis clock (``TIME``), so every replica judges by one clock.
Numbers handed to ``redis.call`` are written by Redis with 17 significant digits, exact for
the integers used here (µs timestamps are below 2^53); hash fields are formatted with ``%d``.
"""

from __future__ import annotations

__all__ = ["ADMIT_SCRIPT", "CALENDAR_LUA", "SETTLE_SCRIPT"]

# UTC calendar arithmetic without os.date (not available to Redis scripts): Howard Hinnant's
# civil-from-days and days-from-civil, valid for every date of the proleptic Gregorian calendar.
CALENDAR_LUA = """
local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- (start, end) in epoch seconds of the UTC day or month holding now_s
local function period_bounds(now_s, period)
  if period == 'day' then
    local start = math.floor(now_s / 86400) * 86400
    return start, start + 86400
  end
  local y, m = civil_from_days(math.floor(now_s / 86400))
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return days_from_civil(y, m, 1) * 86400, days_from_civil(ny, nm, 1) * 86400
end
"""

# KEYS: four per scope (principal first): requests ZSET, tokens HASH, leases ZSET, budget HASH.
# ARGV: tokens, window_us, lease_us, member, then per scope rpm, tpm, max_parallel,
#       token_budget (0: unlimited) and the budget period ('day' | 'month').
# Returns: allowed (1/0), now_us, then per scope: requests, requests_reset_us, tokens_used,
#          tokens_reset_us, in_flight, budget_used, period_start, period_end.
ADMIT_SCRIPT = (
    CALENDAR_LUA
    + """
-- Seconds (µs here) until `tokens` more fit, as the oldest buckets leave the window;
-- the same as _rules.seconds_until_fits.
local function until_fits(buckets, used, tokens, limit, now_us, window_us)
  local excess = used + tokens - limit
  if excess <= 0 then return 0 end
  local freed, gone = 0, now_us
  for _, bucket in ipairs(buckets) do
    freed = freed + bucket[2]
    gone = (bucket[1] + 1) * 1000000 + window_us
    if freed >= excess and tokens <= limit then return math.max(0, gone - now_us) end
  end
  if tokens <= limit then return math.max(0, gone - now_us) end
  return math.max(window_us, gone - now_us)
end

local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now_us = now_s * 1000000 + tonumber(time[2])
local tokens = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2])
local lease_us = tonumber(ARGV[3])
local member = ARGV[4]
local window_ms = math.ceil(window_us / 1000)
local lease_ms = math.ceil(lease_us / 1000)
-- bucket s overlaps (now - window, now] while s + 1 > now - window
local oldest_bucket = math.floor((now_us - window_us) / 1000000)
local scopes = {}
local allowed = 1

-- 1. measure every scope and judge; trimming what has expired is not recording anything
for i = 1, #KEYS / 4 do
  local k, a = (i - 1) * 4, 4 + (i - 1) * 5
  local s = {
    req_key = KEYS[k + 1], tok_key = KEYS[k + 2], par_key = KEYS[k + 3], bud_key = KEYS[k + 4],
    rpm = tonumber(ARGV[a + 1]), tpm = tonumber(ARGV[a + 2]), par = tonumber(ARGV[a + 3]),
    budget = tonumber(ARGV[a + 4]), period = ARGV[a + 5],
    requests = 0, used = 0, buckets = {}, in_flight = 0, budget_used = 0,
    period_start = 0, period_end = 0, current = false,
  }
  if s.rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', s.req_key, '-inf', now_us - window_us)
    s.requests = redis.call('ZCARD', s.req_key)
    if s.requests >= s.rpm then allowed = 0 end
  end
  if s.tpm > 0 then
    local flat = redis.call('HGETALL', s.tok_key)
    local stale = {}
    for j = 1, #flat, 2 do
      local second = tonumber(flat[j])
      if second < oldest_bucket then
        stale[#stale + 1] = flat[j]
      else
        local count = tonumber(flat[j + 1])
        s.buckets[#s.buckets + 1] = {second, count}
        s.used = s.used + count
      end
    end
    if #stale > 0 then redis.call('HDEL', s.tok_key, unpack(stale)) end
    if tokens > s.tpm or s.used + tokens > s.tpm then allowed = 0 end
  end
  if s.par > 0 then
    redis.call('ZREMRANGEBYSCORE', s.par_key, '-inf', now_us)
    s.in_flight = redis.call('ZCARD', s.par_key)
    if s.in_flight >= s.par then allowed = 0 end
  end
  if s.budget > 0 then
    s.period_start, s.period_end = period_bounds(now_s, s.period)
    local stored = redis.call('HMGET', s.bud_key, 'start', 'used')
    if tonumber(stored[1]) == s.period_start then
      s.current = true
      s.budget_used = tonumber(stored[2]) or 0
    end
    if tokens > s.budget or s.budget_used + tokens > s.budget then allowed = 0 end
  end
  scopes[i] = s
end

-- 2. all or nothing: record in every scope, or in none
if allowed == 1 then
  local field = string.format('%d', now_s)
  for _, s in ipairs(scopes) do
    if s.rpm > 0 then
      redis.call('ZADD', s.req_key, now_us, member)
      redis.call('PEXPIRE', s.req_key, window_ms + 1000)
      s.requests = s.requests + 1
    end
    if s.tpm > 0 then
      redis.call('HINCRBY', s.tok_key, field, ARGV[1])
      redis.call('PEXPIRE', s.tok_key, window_ms + 2000)
      s.used = s.used + tokens
      local found = false
      for _, bucket in ipairs(s.buckets) do
        if bucket[1] == now_s then
          bucket[2] = bucket[2] + tokens
          found = true
        end
      end
      if not found then s.buckets[#s.buckets + 1] = {now_s, tokens} end
    end
    if s.par > 0 then
      redis.call('ZADD', s.par_key, now_us + lease_us, member)
      -- only ever extend: a replica configured with shorter leases must not cut others short
      if redis.call('PTTL', s.par_key) < lease_ms + 1000 then
        redis.call('PEXPIRE', s.par_key, lease_ms + 1000)
      end
      s.in_flight = s.in_flight + 1
    end
    if s.budget > 0 then
      if s.current then
        redis.call('HINCRBY', s.bud_key, 'used', ARGV[1])
      else
        redis.call('HSET', s.bud_key, 'start', string.format('%d', s.period_start),
          'used', ARGV[1])
      end
      redis.call('EXPIREAT', s.bud_key, s.period_end + 86400)
      s.budget_used = s.budget_used + tokens
    end
  end
end

-- 3. report the state after the decision, for the headers and the retry time
local out = {allowed, now_us}
for _, s in ipairs(scopes) do
  local requests_reset = 0
  if s.rpm > 0 and s.requests >= s.rpm then
    local index = s.requests - s.rpm
    local entry = redis.call('ZRANGE', s.req_key, index, index, 'WITHSCORES')
    if entry[2] then requests_reset = math.max(0, tonumber(entry[2]) + window_us - now_us) end
  end
  local tokens_reset = 0
  if s.tpm > 0 then
    table.sort(s.buckets, function(x, y) return x[1] < y[1] end)
    tokens_reset = until_fits(s.buckets, s.used, tokens, s.tpm, now_us, window_us)
  end
  out[#out + 1] = s.requests
  out[#out + 1] = requests_reset
  out[#out + 1] = s.used
  out[#out + 1] = tokens_reset
  out[#out + 1] = s.in_flight
  out[#out + 1] = s.budget_used
  out[#out + 1] = s.period_start
  out[#out + 1] = s.period_end
end
return out
"""
)

# KEYS: three per charged scope: tokens HASH, leases ZSET, budget HASH.
# ARGV: correction (actual - reserved), the bucket second, member, window_us, then per scope
#       '1'/'0' for a tpm reservation, '1'/'0' for a lease, the budget period start (0: none).
SETTLE_SCRIPT = """
local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local correction = tonumber(ARGV[1])
local second = tonumber(ARGV[2])
local oldest_bucket = math.floor((now_us - tonumber(ARGV[4])) / 1000000)
for i = 1, #KEYS / 3 do
  local k, a = (i - 1) * 3, 4 + (i - 1) * 3
  -- a bucket that left the window no longer limits anything: its correction is moot
  if ARGV[a + 1] == '1' and correction ~= 0 and second >= oldest_bucket
      and redis.call('HEXISTS', KEYS[k + 1], ARGV[2]) == 1 then
    redis.call('HINCRBY', KEYS[k + 1], ARGV[2], ARGV[1])
  end
  if ARGV[a + 2] == '1' then
    redis.call('ZREM', KEYS[k + 2], ARGV[3])
  end
  local start = tonumber(ARGV[a + 3])
  -- a period that has ended is closed: its counter is no longer read
  if start ~= 0 and correction ~= 0
      and tonumber(redis.call('HGET', KEYS[k + 3], 'start')) == start then
    redis.call('HINCRBY', KEYS[k + 3], 'used', ARGV[1])
  end
end
return 1
"""
