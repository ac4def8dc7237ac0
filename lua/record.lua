-- record.lua: report the outcome of one admitted call, or ask for one retry of it.
--
-- KEYS[1], KEYS[2] (KEYS[3]), ARGV[1..5]: as in _common.lua (composed before this file).
-- ARGV[6] outcome: 'success' | 'failure' | 'ignore' (counts as no call) | 'release'
--          (a probe ended without an outcome: its lease is freed, nothing is counted) |
--          'flush' (no outcome of its own: only ARGV[12]'s calls are added) |
--          'retry' (an attempt failed and the guard would retry it: asks the retry budget,
--          counts nothing else; ARGV[7..13] as for any outcome)
-- ARGV[7] the generation the call was admitted under
-- ARGV[8] the probe token, or '' when the call was not a probe
-- ARGV[9] '1' when the call was slow (took at least slow_call_duration), else '0'
-- ARGV[10] the ms time (server) the call was admitted at, to find the bucket it was counted in
-- ARGV[11] the incarnation the call was admitted under
-- ARGV[12] calls to add to the window now, for calls admitted without asking Redis (the
--          cached consistency mode): this call, if it was one, plus batched successes
-- ARGV[13] '1' to keep the probe's lease: its outcome is known (a timeout) but the call
--          still runs in an abandoned thread; a 'release' frees the lease when it ends
-- ARGV[14] the reporting process's identity (host:pid:random), needed with min_reporters > 1
--          for a failure or a slow call
--
-- Outcomes admitted under an older generation or incarnation never move the breaker
-- ('stale'); the lease of a stale probe is still freed. A breaker that no longer exists is
-- not created again by an outcome: the outcome is stale. In closed and metrics_only, a failure or slow call that
-- meets a trip rule opens the breaker (metrics_only only counts a would-trip and starts
-- counting afresh), if min_reporters distinct processes reported a failure or slow call in
-- the window. In half_open, a probe failure re-opens it and success_threshold probe
-- successes close it.
--
-- The retry budget (ARGV[6] 'retry'): in closed and metrics_only with a retry_budget, a retry
-- is granted while the window's granted retries stay within
--   retry_budget * calls in the window + retry_budget_floor * window seconds,
-- and counted; otherwise it is refused ('exhausted') and retry_budget_exhausted_count grows.
-- Open and forced_open refuse it ('reject', with retry_after_ms): the guard stops retrying.
-- Other states grant it uncounted.
--
-- Returns {status, state, generation, consecutive_failures, now_ms, retry_after_ms, reporters,
--          from_1, to_1, reason_1, ...}
--   status          'recorded' | 'stale' | 'ignored' (nothing to count in this state); for a
--                   'retry': 'retry' | 'exhausted' | 'reject'
--   retry_after_ms  for a 'reject': the ms until the breaker admits again (-1: no deadline)
--   reporters       0, or, when a trip rule fired short of min_reporters, the distinct
--                   reporters it had: the fleet's breaker stayed closed
-- Errors: as acquire.lua.

-- The granted retries and the calls in the window, in one read.
local function retry_window()
  local texts = redis.call('HMGET', KEY, unpack(WINDOW_FIELDS))
  local calls, retries, oldest = 0, 0, NOW - CFG.window_ms
  for i = 1, NBUCKETS do
    local start, c = parse_bucket(texts[i])
    if start ~= nil and start > oldest and start <= NOW then calls = calls + c end
    local r_start, r = string.match(texts[NBUCKETS + i] or '', '^(%d+) (%d+)$')
    r_start = tonumber(r_start)
    if r_start ~= nil and r_start > oldest and r_start <= NOW then retries = retries + tonumber(r) end
  end
  return calls, retries, texts
end

local function ask_retry(s)
  if s.state == 'open' then
    return 'reject', s.open_until - NOW
  elseif s.state == 'forced_open' then
    return 'reject', (s.forced_until > 0) and (s.forced_until - NOW) or -1
  end
  if CFG.retry_budget == nil or (s.state ~= 'closed' and s.state ~= 'metrics_only') then
    -- No budget, or a state that counts nothing (forced_closed) or retries nothing (a probe
    -- has one attempt): the retry goes on.
    return 'retry', 0
  end
  local calls, retries, texts = retry_window()
  if retries + 1 > CFG.retry_budget * calls + CFG.retry_budget_floor * CFG.window_ms / 1000 then
    -- Read, not HINCRBY: a hand-edited count must not turn into a Lua error.
    local refused = count_field(redis.call('HGET', KEY, 'retry_budget_exhausted_count')) or 0
    redis.call('HSET', KEY, 'retry_budget_exhausted_count', int(refused + 1))
    return 'exhausted', 0
  end
  local index = math.floor(NOW / CFG.bucket_ms)
  local slot = (index % NBUCKETS) + 1
  local start = index * CFG.bucket_ms
  local b_start, count = string.match(texts[NBUCKETS + slot] or '', '^(%d+) (%d+)$')
  if tonumber(b_start) == start then
    count = tonumber(count) + 1
  else
    count = 1
  end
  redis.call('HSET', KEY, RETRY_FIELDS[slot], int(start) .. ' ' .. int(count))
  return 'retry', 0
end

-- This process failed (or was slow): it joins the distinct reporters of the window, a set
-- that keeps only the newest min_reporters members, since no trip needs more.
local function note_reporter(identity)
  local added = redis.pcall('ZADD', REPORTERS, NOW, identity)
  if type(added) == 'table' and added.err then
    -- Something else was written at the reporters key (by hand): dropped, as the probes
    -- key would be, rather than fail every failure's record.
    redis.call('DEL', REPORTERS)
    redis.call('HSET', KEY, 'last_repair', 'dropped a non-zset at the reporters key')
    redis.call('ZADD', REPORTERS, NOW, identity)
  end
  redis.call('ZREMRANGEBYSCORE', REPORTERS, '-inf', NOW - CFG.window_ms)
  local extra = redis.call('ZCARD', REPORTERS) - CFG.min_reporters
  if extra > 0 then
    redis.call('ZREM', REPORTERS, unpack(redis.call('ZRANGE', REPORTERS, 0, extra - 1)))
  end
  redis.call('PEXPIRE', REPORTERS, CFG.window_ms)
end

-- 0 when a trip may happen; else the distinct reporters short of min_reporters.
local function reporters_short()
  if CFG.min_reporters <= 1 then return 0 end
  local n = redis.pcall('ZCOUNT', REPORTERS, '(' .. int(NOW - CFG.window_ms), '+inf')
  if type(n) ~= 'number' then n = 0 end  -- not a sorted set (a hand edit): no reporter
  if n >= CFG.min_reporters then return 0 end
  return math.max(n, 1)
end

local function record(keys, argv)
  local bad_args = begin(keys, argv)
  if bad_args then return redis.error_reply(bad_args) end

  local outcome, generation, token = argv[6], tonumber(argv[7]), argv[8]
  local slow = argv[9] == '1'
  local admitted_at = tonumber(argv[10]) or NOW
  local extra_calls = count_field(argv[12]) or 0
  if outcome ~= 'success' and outcome ~= 'failure' and outcome ~= 'ignore'
      and outcome ~= 'release' and outcome ~= 'flush' and outcome ~= 'retry' then
    return redis.error_reply('redbreaker: unknown outcome ' .. tostring(outcome))
  end

  local incarnation = argv[11]
  local reporter = argv[14]
  if CFG.min_reporters > 1 and (outcome == 'failure' or slow)
      and (reporter == nil or reporter == '' or #reporter > 256) then
    return redis.error_reply('redbreaker: min_reporters > 1 needs the reporter (ARGV[14], 1-256 bytes)')
  end

  local s, err = load_state(false)
  if err then return redis.error_reply(err) end
  if s == nil then
    -- Nothing to count a retry in, nor to trip: the budget of a breaker that is gone is moot.
    return { outcome == 'retry' and 'retry' or 'stale', 'closed', 0, 0, NOW, 0, 0 }
  end
  if outcome == 'retry' then
    advance_clock(s)
    local status, retry_after = ask_retry(s)
    return with_events({ status, s.state, s.generation, s.consecutive_failures, NOW, retry_after, 0 })
  end

  if token ~= '' and argv[13] ~= '1' then
    repair_probes()
    redis.call('ZREM', PROBES, token)
  end
  advance_clock(s)

  local status, short = 'ignored', 0
  if generation ~= s.generation or incarnation ~= s.incarnation then
    status = 'stale'
  elseif outcome == 'release' then
    status = 'recorded'
  elseif s.state == 'closed' or s.state == 'metrics_only' then
    status = 'recorded'
    local writes, started = {}, false
    if extra_calls > 0 then started = bump_bucket(NOW, extra_calls, 0, 0, writes) end
    if outcome == 'ignore' then
      started = bump_bucket(admitted_at, -1, 0, 0, writes) or started
    elseif outcome ~= 'flush' then
      if outcome == 'failure' then
        s.consecutive_failures = s.consecutive_failures + 1
      else
        s.consecutive_failures = 0
      end
      if outcome == 'failure' or slow then
        -- Into the bucket the call was counted in, so a window never holds more failures
        -- than calls; a call admitted before the window began no longer counts in the rate.
        started = bump_bucket(admitted_at, 0, outcome == 'failure' and 1 or 0,
          slow and 1 or 0, writes) or started
      end
      writes[#writes + 1] = 'consecutive_failures'
      writes[#writes + 1] = int(s.consecutive_failures)
    end
    -- One write for the streak and the buckets, before the rules read the window.
    if #writes > 0 then redis.call('HSET', KEY, unpack(writes)) end
    if CFG.min_reporters > 1 and (outcome == 'failure' or slow) then note_reporter(reporter) end
    if outcome ~= 'flush' and outcome ~= 'ignore' then
      local reason = trip_reason(s)
      if reason ~= nil then
        short = reporters_short()
        -- Short of the quorum the fleet stays closed; the failing processes' own breakers
        -- protect them, and the next failure (from anyone) asks again.
        if short > 0 then reason = nil end
      end
      if reason ~= nil then
        if s.state == 'metrics_only' then
          -- Shadow mode: say it would have tripped, then count afresh so it can say so again.
          s.would_trip_count = s.would_trip_count + 1
          s.consecutive_failures = 0
          clear_buckets(true)
          redis.call('HSET', KEY, 'consecutive_failures', 0, 'would_trip_count',
            int(s.would_trip_count), 'last_would_trip_at', int(NOW), 'last_reason',
            'would_trip:' .. reason)
          publish('metrics_only', 'metrics_only', 'would_trip:' .. reason, s.generation)
        else
          trip(s, reason)
        end
      end
    end
    -- As in acquire: the TTL moves on when a bucket starts or the state changed.
    if started or #EVENTS > 0 then touch(s, #EVENTS == 0) end
  elseif s.state == 'half_open' and token ~= '' then
    status = 'recorded'
    if outcome == 'failure' then
      trip(s, 'probe_failed')
    elseif outcome == 'success' then
      s.half_open_successes = s.half_open_successes + 1
      redis.call('HSET', KEY, 'half_open_successes', int(s.half_open_successes))
      if s.half_open_successes >= CFG.success_threshold then
        s.consecutive_opens = 0
        transition(s, 'closed', 'probes_succeeded')
      end
    end
    touch(s)
  end

  return with_events({ status, s.state, s.generation, s.consecutive_failures, NOW, 0, short })
end
