-- _common.lua: the part every redbreaker script shares. It is prepended to acquire.lua,
-- record.lua, control.lua and inspect.lua when they are loaded, so each script that reaches
-- Redis is one self-contained EVAL body.
--
-- KEYS[1]  the breaker hash            <prefix>:{<name>}
-- KEYS[2]  the probe leases (ZSET)     <prefix>:{<name>}:probes   member = token, score = expiry ms
--
-- ARGV[1]  server time override in Unix ms, or '' to use Redis TIME (the override is a test seam)
-- ARGV[2]  the pub/sub channel transitions are PUBLISHed on
-- ARGV[3]  the breaker name (only echoed in event payloads)
-- ARGV[4]  a uniform random sample in [0, 1) used to jitter the open duration
-- ARGV[5]  failure_threshold          consecutive failures that trip, or ''
-- ARGV[6]  failure_rate               failure ratio in (0, 1] over the window that trips, or ''
-- ARGV[7]  window_ms                  length of the sliding window
-- ARGV[8]  minimum_calls              calls in the window before a rate can trip
-- ARGV[9]  slow_call_rate             slow ratio in (0, 1] that trips, or '' (slow calls not tracked)
-- ARGV[10] recovery_timeout_ms        first open duration
-- ARGV[11] recovery_backoff           open duration multiplier per consecutive re-open (>= 1)
-- ARGV[12] max_recovery_timeout_ms    cap of the grown open duration
-- ARGV[13] recovery_jitter            fraction in [0, 1) the open duration may be shortened by
-- ARGV[14] half_open_max_calls        probes in flight at once, fleet-wide
-- ARGV[15] success_threshold          probe successes that close the breaker
-- ARGV[16] probe_lease_ms             how long a probe may run before its slot is reclaimed
-- ARGV[17] half_open_max_wait_ms      longest stay in half_open before re-opening, or ''
-- ARGV[18] key_ttl_ms                 idle lifetime of both keys, refreshed on every write
-- ARGV[19..] the script's own arguments (see its header)
--
-- Every reply starts with the script's fixed fields and ends with zero or more transition
-- triples (from_state, to_state, reason): the transitions this very call made. Only the
-- process that receives them fires its local hooks; every watcher gets them by PUBLISH.

local KEY, PROBES = KEYS[1], KEYS[2]
local CHANNEL, NAME = ARGV[2], ARGV[3]
local JITTER_SAMPLE = tonumber(ARGV[4]) or 0
local NBUCKETS = 10

local function optional_number(s)
  if s == nil or s == '' then return nil end
  return tonumber(s)
end

local CFG = {
  failure_threshold = optional_number(ARGV[5]),
  failure_rate = optional_number(ARGV[6]),
  window_ms = tonumber(ARGV[7]),
  minimum_calls = tonumber(ARGV[8]),
  slow_call_rate = optional_number(ARGV[9]),
  recovery_timeout_ms = tonumber(ARGV[10]),
  recovery_backoff = tonumber(ARGV[11]),
  max_recovery_timeout_ms = tonumber(ARGV[12]),
  recovery_jitter = tonumber(ARGV[13]),
  half_open_max_calls = tonumber(ARGV[14]),
  success_threshold = tonumber(ARGV[15]),
  probe_lease_ms = tonumber(ARGV[16]),
  half_open_max_wait_ms = optional_number(ARGV[17]),
  key_ttl_ms = tonumber(ARGV[18]),
}
for _, required in ipairs({'window_ms', 'minimum_calls', 'recovery_timeout_ms', 'recovery_backoff',
    'max_recovery_timeout_ms', 'recovery_jitter', 'half_open_max_calls', 'success_threshold',
    'probe_lease_ms', 'key_ttl_ms'}) do
  if CFG[required] == nil then
    return redis.error_reply('redbreaker: ARGV carries no valid ' .. required)
  end
end

-- The config as a person reads it in HGETALL: written whenever the state changes, so the
-- hash says which settings drove its last transition. Built only then: most calls write none.
local function config_text()
  return table.concat({
    'failure_threshold=' .. ARGV[5], 'failure_rate=' .. ARGV[6], 'window_ms=' .. ARGV[7],
    'minimum_calls=' .. ARGV[8], 'slow_call_rate=' .. ARGV[9],
    'recovery_timeout_ms=' .. ARGV[10], 'recovery_backoff=' .. ARGV[11],
    'max_recovery_timeout_ms=' .. ARGV[12], 'recovery_jitter=' .. ARGV[13],
    'half_open_max_calls=' .. ARGV[14], 'success_threshold=' .. ARGV[15],
    'probe_lease_ms=' .. ARGV[16], 'half_open_max_wait_ms=' .. ARGV[17], 'key_ttl_ms=' .. ARGV[18],
  }, ' ')
end

local STATES = {
  closed = true, open = true, half_open = true,
  forced_open = true, forced_closed = true, metrics_only = true,
}
-- Operator states: set by a person, never left by traffic, only by a deadline or another order.
local OPERATOR_STATES = { forced_open = true, forced_closed = true, metrics_only = true }

local function int(n)
  return string.format('%d', n)
end

local function now_ms()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  -- Every process reads one clock, the server's: host clocks may be hours apart.
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local NOW = now_ms()
if NOW == nil then
  return redis.error_reply('redbreaker: ARGV[1] is not a time in ms')
end

local EVENTS = {}

local BUCKET_MS = math.max(1, math.ceil(CFG.window_ms / NBUCKETS))
local BUCKET_FIELDS = {}
for i = 0, NBUCKETS - 1 do BUCKET_FIELDS[#BUCKET_FIELDS + 1] = 'w.' .. i end

local STATE_FIELDS = {
  'state', 'generation', 'consecutive_failures', 'open_until', 'consecutive_opens',
  'half_open_at', 'half_open_successes', 'forced_until', 'open_count', 'would_trip_count',
  'incarnation',
}

-- Integers Lua holds exactly; anything above is garbage, not a count or a time.
local MAX_EXACT = 9007199254740991

-- A field a person mangled by hand reads as nil here; the caller repairs the whole breaker
-- rather than guess which of the other fields are still true.
local function count_field(v)
  local n = tonumber(v)
  if n == nil or n < 0 or n > MAX_EXACT or n ~= math.floor(n) then return nil end
  return n
end

-- Which life of the breaker this is. A breaker deleted (DEL, FLUSHALL, a restart of an
-- empty Redis, TTL expiry) and created again starts at generation 1 again; the
-- incarnation tells its outcomes apart from those of calls admitted by the old one.
local function new_incarnation()
  local digits = string.match(ARGV[4], '^0?%.(%d+)') or '0'
  return int(NOW) .. '-' .. string.sub(digits, 1, 8)
end

local function write_fields(s, extra)
  local args = {
    'state', s.state, 'generation', int(s.generation),
    'consecutive_failures', int(s.streak), 'open_until', int(s.open_until),
    'consecutive_opens', int(s.consecutive_opens), 'half_open_at', int(s.half_open_at),
    'half_open_successes', int(s.half_open_successes), 'forced_until', int(s.forced_until),
    'open_count', int(s.open_count), 'would_trip_count', int(s.would_trip_count),
    'incarnation', s.incarnation,
  }
  for _, v in ipairs(extra or {}) do args[#args + 1] = v end
  redis.call('HSET', KEY, unpack(args))
end

local function fresh_state()
  return {
    state = 'closed', generation = 1, streak = 0, open_until = 0, consecutive_opens = 0,
    half_open_at = 0, half_open_successes = 0, forced_until = 0, open_count = 0,
    would_trip_count = 0, incarnation = new_incarnation(),
  }
end

-- Keys idle for key_ttl vanish, so abandoned breakers come back closed. An operator state
-- without a deadline is an order a person gave: it stays until a person lifts it.
local function touch(s)
  if OPERATOR_STATES[s.state] and s.forced_until == 0 then
    redis.call('PERSIST', KEY)
    redis.call('PERSIST', PROBES)
    return
  end
  local ttl = CFG.key_ttl_ms
  if s.forced_until > NOW then ttl = ttl + (s.forced_until - NOW) end
  if s.open_until > NOW then ttl = ttl + (s.open_until - NOW) end
  redis.call('PEXPIRE', KEY, ttl)
  redis.call('PEXPIRE', PROBES, ttl)
end

-- retry_after_ms tells watchers that cache rejections how long the new state rejects:
-- the ms until an open (or deadlined forced_open) breaker admits again, -1 for a
-- forced_open without deadline, 0 for states that admit or decide per call.
local function publish(from, to, reason, generation, retry_after_ms)
  EVENTS[#EVENTS + 1] = from
  EVENTS[#EVENTS + 1] = to
  EVENTS[#EVENTS + 1] = reason
  redis.call('PUBLISH', CHANNEL, cjson.encode({
    name = NAME, from_state = from, to_state = to, reason = reason,
    generation = generation, at_ms = NOW, retry_after_ms = retry_after_ms or 0,
  }))
end

-- Every transition starts a new generation with empty counts: outcomes of calls admitted
-- before it are fenced off by the generation they carry. Probe leases outlive it on
-- purpose: a probe of an earlier half-open period that is still running is still a call
-- in flight to the dependency, so it holds its slot until it reports or its lease ends.
local function transition(s, to, reason)
  local from = s.state
  s.state = to
  s.generation = s.generation + 1
  s.streak = 0
  s.half_open_successes = 0
  if to ~= 'half_open' then s.half_open_at = 0 end
  if to ~= 'open' then s.open_until = 0 end
  if not OPERATOR_STATES[to] then s.forced_until = 0 end
  redis.call('HDEL', KEY, unpack(BUCKET_FIELDS))
  write_fields(s, { 'changed_at', int(NOW), 'last_reason', reason, 'config', config_text() })
  local retry_after = 0
  if to == 'open' then
    retry_after = s.open_until - NOW
  elseif to == 'forced_open' then
    retry_after = (s.forced_until > 0) and (s.forced_until - NOW) or -1
  end
  publish(from, to, reason, s.generation, retry_after)
end

local function load_state(create)
  local v = redis.pcall('HMGET', KEY, unpack(STATE_FIELDS))
  if type(v) == 'table' and v.err then
    local err = tostring(v.err)
    if string.find(err, 'WRONGTYPE', 1, true) then
      return nil, 'redbreaker: ' .. KEY .. ' is not a breaker hash (' .. err .. ')'
    end
    return nil, 'redbreaker: cannot read ' .. KEY .. ' (' .. err .. ')'
  end
  if v[1] == false then
    if not create then return nil, nil end
    -- Created only when absent, inside the script: a worker that starts or restarts
    -- never resets the fleet's counts or an open deadline.
    local s = fresh_state()
    write_fields(s, { 'created_at', int(NOW), 'changed_at', int(NOW), 'last_reason', 'created',
      'config', config_text() })
    touch(s)
    return s, nil
  end
  local s = {
    state = v[1], generation = count_field(v[2]), streak = count_field(v[3]),
    open_until = count_field(v[4]), consecutive_opens = count_field(v[5]),
    half_open_at = count_field(v[6]), half_open_successes = count_field(v[7]),
    forced_until = count_field(v[8]), open_count = count_field(v[9]) or 0,
    would_trip_count = count_field(v[10]) or 0, incarnation = v[11],
  }
  local broken = not STATES[s.state]
  for _, f in ipairs({'generation', 'streak', 'open_until', 'consecutive_opens', 'half_open_at',
      'half_open_successes', 'forced_until'}) do
    if s[f] == nil then broken = true end
  end
  if broken then
    -- Self-repair: a breaker whose fields cannot be trusted restarts closed and says so.
    -- The new generation is the current time in ms when the old one is unreadable, which
    -- is above any generation an in-flight call can carry, so their outcomes stay fenced.
    local repaired = fresh_state()  -- a new incarnation too: no old outcome counts
    repaired.generation = s.generation or NOW
    repaired.open_count = s.open_count
    repaired.would_trip_count = s.would_trip_count
    repaired.state = STATES[s.state] and s.state or ''
    transition(repaired, 'closed', 'repaired_invalid_fields')
    touch(repaired)
    return repaired, nil
  end
  if not s.incarnation or s.incarnation == '' then
    -- A breaker written before incarnations existed (or one edited by hand) gets one now.
    s.incarnation = new_incarnation()
    redis.call('HSET', KEY, 'incarnation', s.incarnation)
  end
  return s, nil
end

-- The probe leases key is ours alone; if something else was written there (by hand), it is
-- dropped rather than trusted: the probes it tracked are forgotten, and their leases with it.
local function repair_probes()
  local kind = redis.call('TYPE', PROBES)['ok']
  if kind ~= 'zset' and kind ~= 'none' then
    redis.call('DEL', PROBES)
    redis.call('HSET', KEY, 'last_repair', 'dropped a ' .. kind .. ' at the probes key')
  end
end

local function open_duration(s)
  local grown = CFG.recovery_timeout_ms * (CFG.recovery_backoff ^ (s.consecutive_opens - 1))
  -- A huge exponent gives inf in Lua; min() turns it into the cap.
  local capped = math.min(CFG.max_recovery_timeout_ms, grown)
  return math.max(1, math.floor(capped * (1 - CFG.recovery_jitter * JITTER_SAMPLE)))
end

local function trip(s, reason)
  if s.state == 'half_open' then
    s.consecutive_opens = s.consecutive_opens + 1
  else
    s.consecutive_opens = 1
  end
  s.open_count = s.open_count + 1
  s.open_until = NOW + open_duration(s)
  transition(s, 'open', reason)
  redis.call('HSET', KEY, 'opened_at', int(NOW))
end

-- Time-driven transitions, due whenever any script looks at the breaker.
local function advance_clock(s)
  if OPERATOR_STATES[s.state] and s.forced_until > 0 and NOW >= s.forced_until then
    s.consecutive_opens = 0
    transition(s, 'closed', 'operator_deadline_passed')
  end
  if s.state == 'open' and NOW >= s.open_until then
    transition(s, 'half_open', 'recovery_timeout_elapsed')
    s.half_open_at = NOW
    redis.call('HSET', KEY, 'half_open_at', int(NOW))
  end
  if s.state == 'half_open' and CFG.half_open_max_wait_ms ~= nil
      and NOW - s.half_open_at >= CFG.half_open_max_wait_ms then
    trip(s, 'half_open_max_wait')
  end
end

local function parse_bucket(text)
  if not text then return nil end
  local start, calls, failures, slow = string.match(text, '^(%d+) (%d+) (%d+) (%d+)$')
  if start == nil then return nil end
  return tonumber(start), tonumber(calls), tonumber(failures), tonumber(slow)
end

-- Add to the bucket that holds `at` if it is still the live one for that slot.
local function bump_bucket(at, d_calls, d_failures, d_slow)
  local index = math.floor(at / BUCKET_MS)
  local start = index * BUCKET_MS
  if start <= NOW - CFG.window_ms then return end
  local field = BUCKET_FIELDS[(index % NBUCKETS) + 1]
  local b_start, calls, failures, slow = parse_bucket(redis.call('HGET', KEY, field))
  if b_start ~= start then
    -- A newer live bucket in this slot wins; one from the future is garbage and goes.
    if b_start ~= nil and b_start > start and b_start <= NOW then return end
    calls, failures, slow = 0, 0, 0
  end
  failures = math.max(0, failures + d_failures)
  slow = math.max(0, slow + d_slow)
  -- Failures of calls this bucket never counted (it was overwritten, or the breaker was
  -- wiped meanwhile) still leave a window with no more failures than calls.
  calls = math.max(0, calls + d_calls, failures, slow)
  redis.call('HSET', KEY, field, int(start) .. ' ' .. calls .. ' ' .. failures .. ' ' .. slow)
end

local function window_totals()
  local texts = redis.call('HMGET', KEY, unpack(BUCKET_FIELDS))
  local calls, failures, slow = 0, 0, 0
  for i = 1, NBUCKETS do
    local start, c, f, sl = parse_bucket(texts[i])
    if start ~= nil and start > NOW - CFG.window_ms and start <= NOW then
      calls, failures, slow = calls + c, failures + f, slow + sl
    end
  end
  return calls, failures, slow
end

-- Which rule, if any, says the breaker should trip now.
local function trip_reason(s)
  if CFG.failure_threshold ~= nil and s.streak >= CFG.failure_threshold then
    return 'consecutive_failures'
  end
  if CFG.failure_rate == nil and CFG.slow_call_rate == nil then return nil end
  local calls, failures, slow = window_totals()
  if calls < CFG.minimum_calls or calls == 0 then return nil end
  if CFG.failure_rate ~= nil and failures / calls >= CFG.failure_rate then
    return 'failure_rate'
  end
  if CFG.slow_call_rate ~= nil and slow / calls >= CFG.slow_call_rate then
    return 'slow_call_rate'
  end
  return nil
end

local function with_events(reply)
  for _, v in ipairs(EVENTS) do reply[#reply + 1] = v end
  return reply
end
