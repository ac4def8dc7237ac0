-- _common.lua: the part every redbreaker script shares. Composed two ways (see
-- src/redbreaker/_scripts.py): as one Redis Functions library (this file, then every
-- script's file, then one register_function per script), loaded once with FUNCTION LOAD
-- and called with FCALL; or, where Functions are missing or refused, as one EVAL body per
-- script (this file, the script's file, then `return <script>(KEYS, ARGV)`).
--
-- Everything at the top level of this file runs once per FUNCTION LOAD, not once per call:
-- that is the point of the library form. The per-call context below is set by begin().
--
-- keys[1]  the breaker hash            <prefix>:{<name>}
-- keys[2]  the probe leases (ZSET)     <prefix>:{<name>}:probes   member = token, score = expiry ms
-- keys[3]  the reporters (ZSET)        <prefix>:{<name>}:reporters member = process identity,
--          score = its last failure ms; given where a script may touch it: every script
--          of a config with min_reporters > 1 (an error without it), and inspect always
--          (absent, inspect reports no reporters). Every key a script touches is one of
--          its KEYS, as Redis asks; all three share the {<name>} hash tag, one slot.
--
-- argv[1]  server time override in Unix ms, or '' to use Redis TIME (the override is a test seam)
-- argv[2]  the pub/sub channel transitions are PUBLISHed on
-- argv[3]  the breaker name (only echoed in event payloads)
-- argv[4]  a uniform random sample in [0, 1) used to jitter the open duration
-- argv[5]  the config, as space-separated name=value pairs (an empty value: the rule is off),
--          the fields of SCRIPT_FIELDS in src/redbreaker/_config.py (names, meanings); a
--          field left out takes the default of this release (BreakerConfig's). The pairs
--          that differ from the defaults are written to the hash's `config` field at every
--          transition: a short text keeps the hash in Redis's compact listpack encoding.
-- argv[6..] the script's own arguments (see its header)
--
-- Every reply starts with the script's fixed fields and ends with zero or more transition
-- triples (from_state, to_state, reason): the transitions this very call made. Only the
-- process that receives them fires its local hooks; every watcher gets them by PUBLISH.

local NBUCKETS = 10
local BUCKET_FIELDS = {}
for i = 0, NBUCKETS - 1 do BUCKET_FIELDS[#BUCKET_FIELDS + 1] = 'w.' .. i end
-- The retries a retry budget granted, one 'start count' text per bucket: separate from the
-- call buckets, whose text stays 'start calls failures slow'.
local RETRY_FIELDS = {}
for i = 0, NBUCKETS - 1 do RETRY_FIELDS[#RETRY_FIELDS + 1] = 'r.' .. i end
-- A transition drops both windows in one HDEL (the calls' buckets first, then the retries').
local WINDOW_FIELDS = {}
for i = 1, NBUCKETS do
  WINDOW_FIELDS[i] = BUCKET_FIELDS[i]
  WINDOW_FIELDS[NBUCKETS + i] = RETRY_FIELDS[i]
end

local STATE_FIELDS = {
  'state', 'generation', 'consecutive_failures', 'open_until', 'consecutive_opens',
  'half_open_at', 'half_open_successes', 'forced_until', 'open_count', 'would_trip_count',
  'incarnation',
}

local STATES = {
  closed = true, open = true, half_open = true,
  forced_open = true, forced_closed = true, metrics_only = true,
}
-- Operator states: set by a person, never left by traffic, only by a deadline or another order.
local OPERATOR_STATES = { forced_open = true, forced_closed = true, metrics_only = true }

-- The state fields (by their names in the state table) a breaker cannot be read without.
local REQUIRED_COUNTS = {
  'generation', 'consecutive_failures', 'open_until', 'consecutive_opens', 'half_open_at',
  'half_open_successes', 'forced_until',
}

-- Integers Lua holds exactly; anything above is garbage, not a count or a time.
local MAX_EXACT = 9007199254740991

-- How far a deadline may lie beyond the longest one the config can set and still be
-- trusted: room for the server clock stepping back (NTP, a VM migration) after it was set.
local CLOCK_SLACK_MS = 60000
-- The shortest wait a caller is told while every probe slot is taken.
local PROBE_WAIT_MS = 50
-- The longest operator order (durations are capped at 10 years when a client builds them).
local MAX_ORDER_MS = 10 * 365 * 86400 * 1000

-- {name, may be empty, default text} in the order the config text lists them. Written in
-- when the library is composed, from SCRIPT_FIELDS and BreakerConfig's defaults in
-- src/redbreaker/_config.py: one table for both sides.
local CONFIG_FIELDS = {--[[SCRIPT_FIELDS]]}

-- Counts that are 0 most of a breaker's life are not stored while 0: an absent field reads
-- as 0. Fewer fields keep a breaker small (see touch() and write_fields()).
local ZERO_ABSENT = {
  'open_until', 'consecutive_opens', 'half_open_at', 'half_open_successes', 'forced_until',
  'open_count', 'would_trip_count',
}

-- The per-call context, set by begin() before anything else runs. Redis runs one script
-- at a time, so these upvalues belong to exactly one call while it runs.
local A, KEY, PROBES, REPORTERS, CHANNEL, NAME, JITTER_SAMPLE, CFG, NOW, EVENTS
-- Window bucket texts this call already knows, by field (false: the field is absent), so
-- the admission's bucket arrives with the state in one HMGET instead of its own HGET.
local BUCKET_TEXT

-- Parsed configs by their text: a fleet has a handful, and parsing one costs more than the
-- rest of a closed-state admission. Bounded, because the text comes from clients.
local CONFIGS, CONFIG_COUNT, MAX_CONFIGS = {}, 0, 256

local function parse_config(text)
  local raw = {}
  for name, value in string.gmatch(text, '([%w_]+)=(%S*)') do raw[name] = value end
  local cfg, stored = {}, {}
  for _, field in ipairs(CONFIG_FIELDS) do
    local name, may_be_empty, default = field[1], field[2], field[3]
    local value = raw[name]
    if value == nil then
      value = default
    elseif value ~= default then
      stored[#stored + 1] = name .. '=' .. value
    end
    if not (may_be_empty and value == '') then
      cfg[name] = tonumber(value)
      if cfg[name] == nil then
        return nil, 'redbreaker: the config (ARGV[5]) carries no valid ' .. name
      end
    end
  end
  cfg.bucket_ms = math.max(1, math.ceil(cfg.window_ms / NBUCKETS))
  cfg.stored = table.concat(stored, ' ')
  return cfg, nil
end

local function int(n)
  return string.format('%d', n)
end

local function optional_number(s)
  if s == nil or s == '' then return nil end
  return tonumber(s)
end

local function now_ms()
  if A[1] ~= '' then return tonumber(A[1]) end
  -- Every process reads one clock, the server's: host clocks may be hours apart.
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The parsed config of a text, from the cache when it was parsed before; nil and an error
-- text when it is unusable.
local function config_of(text)
  local cfg = CONFIGS[text]
  if cfg ~= nil then return cfg, nil end
  local err
  cfg, err = parse_config(text)
  if cfg == nil then return nil, err end
  if CONFIG_COUNT >= MAX_CONFIGS then CONFIGS, CONFIG_COUNT = {}, 0 end
  CONFIGS[text], CONFIG_COUNT = cfg, CONFIG_COUNT + 1
  return cfg, nil
end

-- Set the per-call context; returns an error text when the arguments are unusable.
local function begin(keys, argv)
  A, KEY, PROBES, REPORTERS = argv, keys[1], keys[2], keys[3]
  CHANNEL, NAME = argv[2], argv[3]
  JITTER_SAMPLE = tonumber(argv[4]) or 0
  local cfg, err = config_of(argv[5] or '')
  if cfg == nil then return err end
  CFG = cfg
  if REPORTERS ~= nil and REPORTERS ~= KEY .. ':reporters' then
    return 'redbreaker: KEYS[3] must be the reporters key ' .. KEY .. ':reporters'
  end
  if REPORTERS == nil and CFG.min_reporters > 1 then
    return 'redbreaker: min_reporters > 1 needs KEYS[3], the reporters key'
  end
  EVENTS = {}
  BUCKET_TEXT = {}
  NOW = now_ms()
  if NOW == nil then return 'redbreaker: ARGV[1] is not a time in ms' end
  return nil
end

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
  local digits = string.match(A[4], '^0?%.(%d+)') or '0'
  return int(NOW) .. '-' .. string.sub(digits, 1, 8)
end

-- created: the hash is new, so no field of a zero count is there to delete.
local function write_fields(s, extra, created)
  local args = {
    'state', s.state, 'generation', int(s.generation),
    'consecutive_failures', int(s.consecutive_failures), 'incarnation', s.incarnation,
  }
  local zeros = {}
  for _, f in ipairs(ZERO_ABSENT) do
    if s[f] == 0 then
      zeros[#zeros + 1] = f
    else
      args[#args + 1] = f
      args[#args + 1] = int(s[f])
    end
  end
  for _, v in ipairs(extra or {}) do args[#args + 1] = v end
  redis.call('HSET', KEY, unpack(args))
  if #zeros > 0 and not created then redis.call('HDEL', KEY, unpack(zeros)) end
end

local function fresh_state()
  return {
    state = 'closed', generation = 1, consecutive_failures = 0, open_until = 0,
    consecutive_opens = 0, half_open_at = 0, half_open_successes = 0, forced_until = 0,
    open_count = 0, would_trip_count = 0, incarnation = new_incarnation(),
  }
end

-- Keys idle for key_ttl vanish, so abandoned breakers come back closed. An operator state
-- without a deadline is an order a person gave: it stays until a person lifts it. Without
-- a key_ttl the keys never expire, so a volatile-* eviction policy never picks them.
-- key_only: a closed-state admission refreshes the hash alone; the probes key gets its TTL
-- whenever a probe is leased or the state changes, and is never needed longer than that.
local function touch(s, key_only)
  if CFG.key_ttl_ms == nil or (OPERATOR_STATES[s.state] and s.forced_until == 0) then
    redis.call('PERSIST', KEY)
    if not key_only then redis.call('PERSIST', PROBES) end
    return
  end
  local ttl = CFG.key_ttl_ms
  if s.forced_until > NOW then ttl = ttl + (s.forced_until - NOW) end
  if s.open_until > NOW then ttl = ttl + (s.open_until - NOW) end
  redis.call('PEXPIRE', KEY, ttl)
  if not key_only then redis.call('PEXPIRE', PROBES, ttl) end
end

-- retry_after_ms tells watchers that cache rejections how long the new state rejects:
-- the ms until an open (or deadlined forced_open) breaker admits again, -1 for a
-- forced_open without deadline, 0 for states that admit or decide per call.
local function publish(from, to, reason, generation, retry_after_ms)
  EVENTS[#EVENTS + 1] = from
  EVENTS[#EVENTS + 1] = to
  EVENTS[#EVENTS + 1] = reason
  -- A cluster store's channel carries a hash tag (a prefix cannot): sharded pub/sub keeps
  -- the event on the shard that owns the breaker instead of every node.
  local event = cjson.encode({
    name = NAME, from_state = from, to_state = to, reason = reason,
    generation = generation, at_ms = NOW, retry_after_ms = retry_after_ms or 0,
  })
  if string.find(CHANNEL, '{', 1, true) then
    redis.call('SPUBLISH', CHANNEL, event)
  else
    redis.call('PUBLISH', CHANNEL, event)
  end
end

-- Drop the whole window, its reporters and (unless keep_retries) its retries: a new
-- generation counts afresh. A would-trip of metrics_only keeps the retries: the budget
-- bounds retries, not trips, and would start over with every would-trip otherwise.
local function clear_buckets(keep_retries)
  redis.call('HDEL', KEY, unpack(keep_retries and BUCKET_FIELDS or WINDOW_FIELDS))
  for _, field in ipairs(BUCKET_FIELDS) do BUCKET_TEXT[field] = false end
  if CFG.min_reporters > 1 then redis.call('DEL', REPORTERS) end
end

-- Every transition starts a new generation with empty counts: outcomes of calls admitted
-- before it are fenced off by the generation they carry. Probe leases outlive it on
-- purpose: a probe of an earlier half-open period that is still running is still a call
-- in flight to the dependency, so it holds its slot until it reports or its lease ends.
local function transition(s, to, reason)
  local from = s.state
  s.state = to
  s.generation = s.generation + 1
  s.consecutive_failures = 0
  s.half_open_successes = 0
  if to ~= 'half_open' then s.half_open_at = 0 end
  if to ~= 'open' then s.open_until = 0 end
  if not OPERATOR_STATES[to] then s.forced_until = 0 end
  clear_buckets()
  write_fields(s, { 'changed_at', int(NOW), 'last_reason', reason, 'config', CFG.stored })
  local retry_after = 0
  if to == 'open' then
    retry_after = s.open_until - NOW
  elseif to == 'forced_open' then
    retry_after = (s.forced_until > 0) and (s.forced_until - NOW) or -1
  end
  publish(from, to, reason, s.generation, retry_after)
end

local function bucket_field(at)
  return BUCKET_FIELDS[(math.floor(at / CFG.bucket_ms) % NBUCKETS) + 1]
end

-- A deadline no config could have set (a hand edit, a clock far ahead): trusting it would
-- reject every caller for centuries, so the breaker is repaired instead.
local function beyond_config(s)
  local latest = NOW + CLOCK_SLACK_MS
  if s.state == 'open' and s.open_until > latest + CFG.max_recovery_timeout_ms then
    -- Another config may have opened it (the CLI's, a process of a rolling deploy): the
    -- one that did is stored with it, and its longest open duration counts too.
    local opener = config_of(redis.call('HGET', KEY, 'config') or '')
    local longest = opener and opener.max_recovery_timeout_ms or 0
    if not (longest >= 0) then longest = 0 end  -- NaN from a hand-edited text
    longest = math.min(longest, MAX_ORDER_MS)
    if s.open_until > latest + longest then return true end
  end
  if OPERATOR_STATES[s.state] and s.forced_until > latest + MAX_ORDER_MS then return true end
  -- half_open_at is a past time; one in the future would keep half_open_max_wait from firing.
  return s.state == 'half_open' and s.half_open_at > latest
end

local function load_state(create)
  local now_bucket = bucket_field(NOW)
  STATE_FIELDS[#STATE_FIELDS + 1] = now_bucket
  local v = redis.pcall('HMGET', KEY, unpack(STATE_FIELDS))
  STATE_FIELDS[#STATE_FIELDS] = nil
  if type(v) == 'table' and v.err then
    local err = tostring(v.err)
    if string.find(err, 'WRONGTYPE', 1, true) then
      return nil, 'redbreaker: ' .. KEY .. ' is not a breaker hash (' .. err .. ')'
    end
    return nil, 'redbreaker: cannot read ' .. KEY .. ' (' .. err .. ')'
  end
  BUCKET_TEXT[now_bucket] = v[#STATE_FIELDS + 1]
  if v[1] == false then
    if not create then return nil, nil end
    -- Created only when absent, inside the script: a worker that starts or restarts
    -- never resets the fleet's counts or an open deadline.
    local s = fresh_state()
    write_fields(s, { 'created_at', int(NOW), 'changed_at', int(NOW), 'last_reason', 'created',
      'config', CFG.stored }, true)
    touch(s)
    return s, nil
  end
  local s = {
    state = v[1], generation = count_field(v[2]), consecutive_failures = count_field(v[3]),
    open_until = count_field(v[4] or 0), consecutive_opens = count_field(v[5] or 0),
    half_open_at = count_field(v[6] or 0), half_open_successes = count_field(v[7] or 0),
    forced_until = count_field(v[8] or 0), open_count = count_field(v[9]) or 0,
    would_trip_count = count_field(v[10]) or 0, incarnation = v[11],
  }
  local broken = not STATES[s.state]
  for _, f in ipairs(REQUIRED_COUNTS) do
    if s[f] == nil then broken = true end
  end
  if not broken and beyond_config(s) then broken = true end
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

-- Add to the bucket that holds `at` if it is still the live one for that slot. Returns
-- true when this started a new bucket (at most once per bucket_ms per slot). With
-- `writes`, the new bucket text joins that list of HSET field/value pairs instead of being
-- written at once, so a caller writes all its fields in one HSET.
local function bump_bucket(at, d_calls, d_failures, d_slow, writes)
  local index = math.floor(at / CFG.bucket_ms)
  local start = index * CFG.bucket_ms
  if start <= NOW - CFG.window_ms then return false end
  local field = BUCKET_FIELDS[(index % NBUCKETS) + 1]
  local text = BUCKET_TEXT[field]
  if text == nil then text = redis.call('HGET', KEY, field) end
  local b_start, calls, failures, slow = parse_bucket(text)
  local started = b_start ~= start
  if started then
    -- A newer live bucket in this slot wins; one from the future is garbage and goes.
    if b_start ~= nil and b_start > start and b_start <= NOW then return false end
    calls, failures, slow = 0, 0, 0
  end
  failures = math.max(0, failures + d_failures)
  slow = math.max(0, slow + d_slow)
  -- Failures of calls this bucket never counted (it was overwritten, or the breaker was
  -- wiped meanwhile) still leave a window with no more failures than calls.
  calls = math.max(0, calls + d_calls, failures, slow)
  text = int(start) .. ' ' .. calls .. ' ' .. failures .. ' ' .. slow
  if writes then
    writes[#writes + 1] = field
    writes[#writes + 1] = text
  else
    redis.call('HSET', KEY, field, text)
  end
  BUCKET_TEXT[field] = text
  return started
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
  if CFG.failure_threshold ~= nil and s.consecutive_failures >= CFG.failure_threshold then
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
