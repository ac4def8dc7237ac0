-- inspect.lua: read a breaker without changing it.
--
-- KEYS[1], KEYS[2] (KEYS[3]), ARGV[1..5]: as in _common.lua (composed before this file).
--
-- Returns {now_ms, probes_in_flight, {reporter_1, ...}, field_1, value_1, field_2, value_2, ...}:
-- the hash as HGETALL gives it (empty when the breaker does not exist), the probe leases
-- that have not expired, and the identities of the processes that reported a failure
-- within the window, newest first (kept only with min_reporters > 1, at most that many). Due time-driven transitions are not applied: the next acquire applies them.
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
  local reporters = {}
  if REPORTERS ~= nil and redis.call('TYPE', REPORTERS)['ok'] == 'zset' then
    -- Over the window the breaker's own config keeps (a reader, such as the CLI, may
    -- have another), as decode_snapshot sums the window's counts. The set holds at most
    -- min_reporters members: read whole, newest first.
    local stored = kind == 'hash' and config_of(redis.call('HGET', KEY, 'config') or '') or nil
    local oldest = NOW - (stored and stored.window_ms or CFG.window_ms)
    local members = redis.call('ZRANGE', REPORTERS, 0, -1, 'WITHSCORES')
    for i = #members - 1, 1, -2 do
      if tonumber(members[i + 1]) > oldest then reporters[#reporters + 1] = members[i] end
    end
  end
  local reply = { NOW, probes, reporters }
  for _, v in ipairs(redis.call('HGETALL', KEY)) do reply[#reply + 1] = v end
  return reply
end
