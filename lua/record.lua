-- record.lua: report the outcome of one admitted call.
--
-- KEYS[1], KEYS[2], ARGV[1..5]: as in _common.lua (composed before this file).
-- ARGV[6] outcome: 'success' | 'failure' | 'ignore' (counts as no call) | 'release'
--          (a probe ended without an outcome: its lease is freed, nothing is counted) |
--          'flush' (no outcome of its own: only ARGV[12]'s calls are added)
-- ARGV[7] the generation the call was admitted under
-- ARGV[8] the probe token, or '' when the call was not a probe
-- ARGV[9] '1' when the call was slow (took at least slow_call_duration), else '0'
-- ARGV[10] the ms time (server) the call was admitted at, to find the bucket it was counted in
-- ARGV[11] the incarnation the call was admitted under
-- ARGV[12] calls to add to the window now, for calls admitted without asking Redis (the
--          cached consistency mode): this call, if it was one, plus batched successes
-- ARGV[13] '1' to keep the probe's lease: its outcome is known (a timeout) but the call
--          still runs in an abandoned thread; a 'release' frees the lease when it ends
--
-- Outcomes admitted under an older generation or incarnation never move the breaker
-- ('stale'); the lease of a stale probe is still freed. A breaker that no longer exists is
-- not created again by an outcome: the outcome is stale. In closed and metrics_only, a failure or slow call that
-- meets a trip rule opens the breaker (metrics_only only counts a would-trip and starts
-- counting afresh). In half_open, a probe failure re-opens it and success_threshold probe
-- successes close it.
--
-- Returns {status, state, generation, consecutive_failures, now_ms, from_1, to_1, reason_1, ...}
--   status  'recorded' | 'stale' | 'ignored' (nothing to count in this state)
-- Errors: as acquire.lua.

local function record(keys, argv)
  local bad_args = begin(keys, argv)
  if bad_args then return redis.error_reply(bad_args) end

  local outcome, generation, token = argv[6], tonumber(argv[7]), argv[8]
  local slow = argv[9] == '1'
  local admitted_at = tonumber(argv[10]) or NOW
  local extra_calls = count_field(argv[12]) or 0
  if outcome ~= 'success' and outcome ~= 'failure' and outcome ~= 'ignore'
      and outcome ~= 'release' and outcome ~= 'flush' then
    return redis.error_reply('redbreaker: unknown outcome ' .. tostring(outcome))
  end

  local incarnation = argv[11]

  local s, err = load_state(false)
  if err then return redis.error_reply(err) end
  if s == nil then
    return { 'stale', 'closed', 0, 0, NOW }
  end

  if token ~= '' and argv[13] ~= '1' then
    repair_probes()
    redis.call('ZREM', PROBES, token)
  end
  advance_clock(s)

  local status = 'ignored'
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
    if outcome ~= 'flush' and outcome ~= 'ignore' then
      local reason = trip_reason(s)
      if reason ~= nil then
        if s.state == 'metrics_only' then
          -- Shadow mode: say it would have tripped, then count afresh so it can say so again.
          s.would_trip_count = s.would_trip_count + 1
          s.consecutive_failures = 0
          clear_buckets()
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

  return with_events({ status, s.state, s.generation, s.consecutive_failures, NOW })
end
