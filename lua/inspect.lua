-- inspect.lua: read a breaker without changing it.
--
-- KEYS[1], KEYS[2], ARGV[1..5]: as in _common.lua (composed before this file).
--
-- Returns {now_ms, probes_in_flight, reporters, field_1, value_1, field_2, value_2, ...}: the
-- hash as HGETALL gives it (empty when the breaker does not exist), the probe leases that
-- have not expired, and the distinct processes that reported a failure within the window
-- (counted only with min_reporters > 1; the set keeps at most min_reporters of them). Due time-driven transitions are not applied: the next acquire applies them.
-- Errors: as acquire.lua.

local function inspect(keys, argv)
  local bad_args = begin(keys, argv)
  if bad_args then return redis.error_reply(bad_args) end

  local kind = redis.call('TYPE', KEY)['ok']
  if kind ~= 'hash' and kind ~= 'none' then
    return redis.error_reply('redbreaker: ' .. KEY .. ' is not a breaker hash (it is a ' .. kind .. ')')
  end
  local probes = 0
  if redis.call('TYPE', PROBES)['ok'] == 'zset' then
    probes = redis.call('ZCOUNT', PROBES, '(' .. int(NOW), '+inf')
  end
  local reporters = 0
  if redis.call('TYPE', REPORTERS)['ok'] == 'zset' then
    -- Over the window the breaker's own config keeps (a reader, such as the CLI, may
    -- have another), as decode_snapshot sums the window's counts.
    local stored = kind == 'hash' and config_of(redis.call('HGET', KEY, 'config') or '') or nil
    local window_ms = stored and stored.window_ms or CFG.window_ms
    reporters = redis.call('ZCOUNT', REPORTERS, '(' .. int(NOW - window_ms), '+inf')
  end
  local reply = { NOW, probes, reporters }
  for _, v in ipairs(redis.call('HGETALL', KEY)) do reply[#reply + 1] = v end
  return reply
end
