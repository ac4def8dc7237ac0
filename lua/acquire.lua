-- acquire.lua: "may this call go ahead?" Decides admission for one call, fleet-wide.
--
-- KEYS[1], KEYS[2] (KEYS[3]), ARGV[1..5]: as in _common.lua (composed before this file).
-- ARGV[6] the token to lease a probe slot under, chosen by the caller (1-64 characters of
--         letters, digits, '.' and '-'), so that a caller interrupted before it read this
--         reply can still free the slot; '' leases under '<generation>.<probe_seq>'
--
-- Creates the breaker closed if it does not exist. Applies due time-driven transitions
-- (open -> half_open after the open deadline, half_open -> open after half_open_max_wait,
-- an operator state whose deadline passed -> closed), then decides:
--   closed, metrics_only, forced_closed  -> admit
--   half_open with a free probe slot     -> probe: a lease token valid for probe_lease_ms
--   open, forced_open, half_open full    -> reject with the ms until a retry may pass
--
-- Returns {verdict, state, generation, consecutive_failures, probe_token, retry_after_ms,
--          now_ms, incarnation, from_1, to_1, reason_1, ...}
--   verdict         'admit' | 'probe' | 'reject'
--   probe_token     '' unless verdict is 'probe'
--   retry_after_ms  0 unless rejected; what a caller should wait before asking again:
--                   open -> until the open deadline; forced_open -> until its deadline, -1
--                   without one; half_open with every slot taken -> as long as the oldest
--                   probe has run (at least PROBE_WAIT_MS), never past its lease's end
--   incarnation     which life of the breaker admitted the call (see _common.lua)
-- Errors: a reply error starting 'redbreaker:' when KEYS[1] is not a hash or ARGV is bad.

-- The closed-state admission, what a healthy fleet runs on every strict call: the decision
-- the full path below makes for a closed breaker (no clock-driven transition is ever due in
-- it), with no state table, only the fields that decision and its checks read, and
-- one write. nil hands the call to the full path: a config not parsed yet, another state,
-- a field that needs repair, an error to report.
local function admit_closed(keys, argv)
  local cfg = CONFIGS[argv[5]]
  local wanted = argv[6]
  if cfg == nil or wanted == nil or #wanted > 64 or not string.find(wanted, '^[%w%.%-]*$') then
    return nil
  end
  local now
  if argv[1] == '' then
    local t = redis.call('TIME')
    now = t[1] * 1000 + math.floor(t[2] / 1000)
  else
    now = tonumber(argv[1])
    if now == nil then return nil end
  end
  local bucket_ms = cfg.bucket_ms
  local index = math.floor(now / bucket_ms)
  local field = BUCKET_FIELDS[(index % NBUCKETS) + 1]
  local key = keys[1]
  local v = redis.pcall('HMGET', key, 'state', 'generation', 'consecutive_failures',
    'open_until', 'consecutive_opens', 'half_open_at', 'half_open_successes', 'forced_until',
    'incarnation', field)
  if v.err or v[1] ~= 'closed' or not v[9] or v[9] == '' then return nil end
  -- The counts count_field() accepts, checked as text: at most 15 digits (a longer
  -- count, even a valid one, is left to the full path). Those of v[4..8] may be absent (0).
  if not v[2] or not v[3] then return nil end
  for i = 2, 8 do
    local text = v[i]
    if text and (text == '' or #text > 15 or string.find(text, '%D')) then return nil end
  end
  local start = index * bucket_ms
  if start > now - cfg.window_ms then
    -- Text in, text out where it can: number-to-text conversions are the dear part here.
    local b_start, calls, b_failures, slow = string.match(v[10] or '', '^(%d+) (%d+) (%d+) (%d+)$')
    local text
    if tonumber(b_start) == start then
      calls = calls + 1
      if calls < tonumber(b_failures) or calls < tonumber(slow) then
        calls = math.max(tonumber(b_failures), tonumber(slow))
      end
      text = b_start .. ' ' .. int(calls) .. ' ' .. b_failures .. ' ' .. slow
    elseif b_start == nil or tonumber(b_start) <= start or tonumber(b_start) > now then
      -- A new bucket (a newer live one in this slot wins and takes no write): the TTL
      -- moves on with it, as touch() does, at most once per bucket_ms.
      text = int(start) .. ' 1 0 0'
      local ttl = cfg.key_ttl_ms
      if ttl == nil then
        redis.call('PERSIST', key)
      else
        local forced_until, open_until = tonumber(v[8] or 0), tonumber(v[4] or 0)
        if forced_until > now then ttl = ttl + (forced_until - now) end
        if open_until > now then ttl = ttl + (open_until - now) end
        redis.call('PEXPIRE', key, ttl)
      end
    end
    if text then redis.call('HSET', key, field, text) end
  end
  return { 'admit', 'closed', tonumber(v[2]), tonumber(v[3]), '', 0, now, v[9] }
end

local function acquire(keys, argv)
  local fast = admit_closed(keys, argv)
  if fast then return fast end
  local bad_args = begin(keys, argv)
  if bad_args then return redis.error_reply(bad_args) end

  local wanted = argv[6] or ''
  if #wanted > 64 or not string.match(wanted, '^[%w%.%-]*$') then
    return redis.error_reply('redbreaker: the probe token (ARGV[6]) is not 1-64 of [A-Za-z0-9.-]')
  end

  local s, err = load_state(true)
  if err then return redis.error_reply(err) end
  advance_clock(s)

  local verdict, token, retry_after = 'reject', '', 0

  if s.state == 'closed' or s.state == 'metrics_only' then
    verdict = 'admit'
    -- Calls are counted when admitted, failures and slow calls when reported, so a plain
    -- success needs no second round trip to be part of the failure rate.
    local new_bucket = bump_bucket(NOW, 1, 0, 0)
    -- The TTL moves on when a bucket starts (every window/10 at most) or the state changed:
    -- once per admission would double the cost of one, and key_ttl >= 2 windows anyway.
    if new_bucket or #EVENTS > 0 then touch(s, #EVENTS == 0) end
  elseif s.state == 'forced_closed' then
    verdict = 'admit'
  elseif s.state == 'forced_open' then
    retry_after = (s.forced_until > 0) and (s.forced_until - NOW) or -1
  elseif s.state == 'open' then
    retry_after = s.open_until - NOW
  else
    -- half_open: a lease whose holder died is reclaimed here, so a crash cannot wedge it.
    -- Leases of earlier half-open periods still count: those probes are still running.
    repair_probes()
    redis.call('ZREMRANGEBYSCORE', PROBES, '-inf', NOW)
    -- No lease of ours ends later than a lease granted now (give or take a clock step); a
    -- later one was written by hand.
    redis.call('ZREMRANGEBYSCORE', PROBES,
      '(' .. int(NOW + CFG.probe_lease_ms + CLOCK_SLACK_MS), '+inf')
    if redis.call('ZCARD', PROBES) < CFG.half_open_max_calls then
      verdict = 'probe'
      token = wanted
      if token == '' then
        -- Read, not HINCRBY: a hand-edited probe_seq must not turn into a Lua error.
        local seq = (count_field(redis.call('HGET', KEY, 'probe_seq')) or 0) + 1
        redis.call('HSET', KEY, 'probe_seq', int(seq))
        token = int(s.generation) .. '.' .. int(seq)
      end
      redis.call('ZADD', PROBES, int(NOW + CFG.probe_lease_ms), token)
      touch(s)
    else
      -- Every slot is taken. A probe usually reports long before its lease ends, so wait
      -- as long as the oldest probe has run so far (growing like a backoff when asked
      -- again), at least PROBE_WAIT_MS and never past the end of its lease.
      local first = redis.call('ZRANGE', PROBES, 0, 0, 'WITHSCORES')
      local expiry = tonumber(first[2])
      local age = NOW - (expiry - CFG.probe_lease_ms)
      retry_after = math.max(1, math.min(expiry - NOW, math.max(PROBE_WAIT_MS, age)))
    end
  end

  return with_events({ verdict, s.state, s.generation, s.consecutive_failures, token, retry_after, NOW,
    s.incarnation })
end
