-- control.lua: an operator's order, applied fleet-wide.
--
-- KEYS[1], KEYS[2] (KEYS[3]), ARGV[1..5]: as in _common.lua (composed before this file).
-- ARGV[6] order: 'force_open' | 'force_close' | 'metrics_only' | 'reset'
-- ARGV[7] how long the order holds in ms, or '' for no deadline (ignored by 'reset')
--
-- force_open rejects every call, force_close admits every call and counts nothing,
-- metrics_only admits every call, counts, and reports when it would have tripped. With a
-- deadline the breaker returns to closed when it passes; without one the keys lose their
-- TTL and the order stands until another order replaces it. reset returns to closed with
-- empty counts, frees every probe slot and forgets the open backoff. An order for the state the breaker is already
-- in only moves its deadline.
--
-- Returns {state, generation, forced_until_ms, now_ms, from_1, to_1, reason_1, ...}
-- Errors: as acquire.lua, and for an unknown order or a bad duration.

local function control(keys, argv)
  local bad_args = begin(keys, argv)
  if bad_args then return redis.error_reply(bad_args) end

  local order = argv[6]
  local TARGETS = {
    force_open = 'forced_open', force_close = 'forced_closed', metrics_only = 'metrics_only',
    reset = 'closed',
  }
  local target = TARGETS[order]
  if target == nil then
    return redis.error_reply('redbreaker: unknown order ' .. tostring(order))
  end
  local hold_ms = optional_number(argv[7])
  if argv[7] ~= '' and (hold_ms == nil or hold_ms <= 0) then
    return redis.error_reply('redbreaker: the order duration must be a positive ms count')
  end

  local s, err = load_state(true)
  if err then return redis.error_reply(err) end
  advance_clock(s)

  local forced_until = 0
  if order ~= 'reset' and hold_ms ~= nil then forced_until = NOW + math.floor(hold_ms) end

  if order == 'reset' then
    s.consecutive_opens = 0
    -- A reset forgets everything, the probe slots of calls still running included.
    redis.call('DEL', PROBES)
    transition(s, 'closed', 'reset')
  elseif s.state ~= target then
    s.forced_until = forced_until
    transition(s, target, 'operator:' .. order)
  else
    s.forced_until = forced_until
    redis.call('HSET', KEY, 'forced_until', int(forced_until))
  end
  touch(s)

  return with_events({ s.state, s.generation, s.forced_until, NOW })
end
