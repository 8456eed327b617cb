"""The Lua scripts of the line service. Each is atomic, is handed every key it touches in KEYS (one hash slot on a
Redis Cluster when the keys share a hash tag), and checks every argument and key type before its first write:
Redis never rolls back a script that fails half way. The `#!lua` header makes Redis refuse a whole call, before it
runs, when it is out of memory.

FOLD  (one call per batch of events) for each event still pending for this consumer (the fence): append its
      record to its coil's log, count it in the coil's meta hash, mark the coil open, note the camera's newest
      coil, and XACK it; an event of a coil already reported is counted `late` in the coil's tombstone. Events with
      no coil (or bad ones) are only acked. No event is folded twice, none is acked without its fold.
END   (one call per coil-end entry) fenced the same way: the coil is ended at the entry's time with its length.
CLOSE (one call per report) refuses unless the coil is still open at the version the report was computed from
      and, for a deadline close, every event published up to the deadline has been folded; then XADDs the report
      entry, marks the coil closed and lists it as unwritten (its files follow).
FINISH after the files are written: the coil's log is freed, its meta hash stays as a tombstone for
      coils.tombstone_ttl_s.
CLAIM hands this consumer the pending entries of one other consumer whose heartbeat key is gone.
"""

FOLD = r"""#!lua
-- KEYS: events, open, cameras, then meta, log of each coil in ARGV order
-- ARGV: group, consumer, max_bytes, ncoils, nack, then per coil: coil, n, n x (id, ms, camera, kind, record),
--       then nack ids to ack only
local group, consumer = ARGV[1], ARGV[2]
local max_bytes, ncoils, nack = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not (max_bytes and ncoils and nack) or #KEYS ~= 3 + 2 * ncoils then
  return redis.error_reply('ERR fold: malformed header arguments')
end
local want = {[1] = 'stream', [2] = 'zset', [3] = 'hash'}
for k = 4, #KEYS do want[k] = (k % 2 == 0) and 'hash' or 'string' end
for k, key in ipairs(KEYS) do
  local t = redis.call('TYPE', key)['ok']
  if t ~= want[k] and t ~= 'none' then
    return redis.error_reply('WRONGTYPE fold: key ' .. key .. ' holds a ' .. t .. ', not a ' .. want[k])
  end
end
local function pending(id)
  return #redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer) == 1
end
local coils, i = {}, 6
for c = 1, ncoils do
  local n = tonumber(ARGV[i + 1])
  if not n or n < 0 or i + 1 + 5 * n > #ARGV then
    return redis.error_reply('ERR fold: malformed coil ' .. c)
  end
  local evs = {}
  for k = 1, n do
    local b = i + 2 + 5 * (k - 1)
    local ms = tonumber(ARGV[b + 1])
    local kind = ARGV[b + 3]
    if not ms or not (kind == 'store' or kind == 'unplaced' or kind == 'unknown_camera') then
      return redis.error_reply('ERR fold: malformed event ' .. k .. ' of coil ' .. c)
    end
    evs[k] = {id = ARGV[b], ms = ms, camera = ARGV[b + 2], kind = kind, record = ARGV[b + 4],
              fenced = pending(ARGV[b])}
  end
  coils[c] = {name = ARGV[i], meta = KEYS[2 + 2 * c], log = KEYS[3 + 2 * c], events = evs}
  i = i + 2 + 5 * n
end
if i + nack ~= #ARGV + 1 then
  return redis.error_reply('ERR fold: ' .. (#ARGV + 1 - i - nack) .. ' arguments left over')
end
local acks = {}
for k = 1, nack do acks[k] = {id = ARGV[i + k - 1], fenced = pending(ARGV[i + k - 1])} end

local function parse_id(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)')
  return tonumber(ms), tonumber(sq)
end
local function newer(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am > bm or (am == bm and as > bs)
end

local folded, fenced_out, late, dropped = 0, 0, 0, 0
for _, c in ipairs(coils) do
  local status = redis.call('HGET', c.meta, 'status')
  for _, ev in ipairs(c.events) do
    if not ev.fenced then
      fenced_out = fenced_out + 1
    else
      if status == 'closed' or status == 'done' then
        redis.call('HINCRBY', c.meta, 'late', 1)
        late = late + 1
      else
        if not status then
          redis.call('HSET', c.meta, 'status', 'open', 'first_ms', ev.ms)
          status = 'open'
        end
        if ev.kind == 'store' then
          if redis.call('STRLEN', c.log) + #ev.record > max_bytes then
            redis.call('HINCRBY', c.meta, 'dropped', 1)
            dropped = dropped + 1
          else
            redis.call('APPEND', c.log, ev.record)
          end
        else
          redis.call('HINCRBY', c.meta, ev.kind, 1)
        end
        if ev.kind ~= 'unknown_camera' then
          redis.call('HSET', c.meta, 'cam:' .. ev.camera, 1)
          local cur = redis.call('HGET', KEYS[3], ev.camera)
          if not cur or newer(ev.id, cur) then redis.call('HSET', KEYS[3], ev.camera, ev.id .. ' ' .. c.name) end
        end
        redis.call('HINCRBY', c.meta, 'events', 1)
        redis.call('HINCRBY', c.meta, 'v', 1)
        local last = tonumber(redis.call('HGET', c.meta, 'last_ms'))
        if not last or ev.ms > last then
          redis.call('HSET', c.meta, 'last_ms', ev.ms)
          redis.call('ZADD', KEYS[2], ev.ms, c.name)
        end
        folded = folded + 1
      end
      redis.call('XACK', KEYS[1], group, ev.id)
    end
  end
end
for _, a in ipairs(acks) do
  if a.fenced then redis.call('XACK', KEYS[1], group, a.id) else fenced_out = fenced_out + 1 end
end
return {folded, fenced_out, late, dropped}
"""

END = r"""#!lua
-- KEYS: coil_ends, open, meta. ARGV: group, consumer, id, ms, length_mm ('' when not given), coil
-- Returns 0 fenced out, 1 ended, 2 the coil was already reported (counted late_ends in its tombstone).
local group, consumer, id, ms, length, coil = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
if not ms or (length ~= '' and not tonumber(length)) then
  return redis.error_reply('ERR end: malformed arguments')
end
for k, t in ipairs({'stream', 'zset', 'hash'}) do
  local have = redis.call('TYPE', KEYS[k])['ok']
  if have ~= t and have ~= 'none' then
    return redis.error_reply('WRONGTYPE end: key ' .. KEYS[k] .. ' holds a ' .. have .. ', not a ' .. t)
  end
end
if #redis.call('XPENDING', KEYS[1], group, id, id, 1, consumer) ~= 1 then return 0 end
local status = redis.call('HGET', KEYS[3], 'status')
local result = 1
if status == 'closed' or status == 'done' then
  redis.call('HINCRBY', KEYS[3], 'late_ends', 1)
  result = 2
else
  if not status then
    redis.call('HSET', KEYS[3], 'status', 'open', 'first_ms', ms)
    redis.call('ZADD', KEYS[2], 'NX', ms, coil)
  end
  local prev = tonumber(redis.call('HGET', KEYS[3], 'end_ms'))
  if not prev or ms < prev then  -- the first end counts, whatever order replicas fold them in
    redis.call('HSET', KEYS[3], 'end_ms', ms)
    if length ~= '' then
      redis.call('HSET', KEYS[3], 'length_mm', length)
    else
      redis.call('HDEL', KEYS[3], 'length_mm')
    end
  end
  redis.call('HINCRBY', KEYS[3], 'ends', 1)
  redis.call('HINCRBY', KEYS[3], 'v', 1)
end
redis.call('XACK', KEYS[1], group, id)
return result
"""

CLOSE = r"""#!lua
-- KEYS: events, coils, open, unwritten, meta
-- ARGV: group, coil, version, deadline_ms ('' = no check), entry, maxlen, closed_ts, closed_by
-- Returns {1, report id}, {0} (not open at that version any more) or {-1} (events before the deadline unfolded).
local group, coil, version, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local maxlen = tonumber(ARGV[6])
if not maxlen or (deadline ~= '' and not tonumber(deadline)) then
  return redis.error_reply('ERR close: malformed arguments')
end
for k, t in ipairs({'stream', 'stream', 'zset', 'set', 'hash'}) do
  local have = redis.call('TYPE', KEYS[k])['ok']
  if have ~= t and have ~= 'none' then
    return redis.error_reply('WRONGTYPE close: key ' .. KEYS[k] .. ' holds a ' .. have .. ', not a ' .. t)
  end
end
if redis.call('HGET', KEYS[5], 'status') ~= 'open' or (redis.call('HGET', KEYS[5], 'v') or '0') ~= version then
  return {0}
end
if deadline ~= '' then
  -- the first events entry the group still owes this service: its first pending one, else what follows its
  -- last-delivered id (or now, when it has had everything)
  local function ms_of(id) return tonumber(string.match(id, '^(%d+)-')) end
  local need = nil
  if redis.call('EXISTS', KEYS[1]) == 1 then
    for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local g = {}
      for j = 1, #info, 2 do g[info[j]] = info[j + 1] end
      if g['name'] == group then
        if g['pending'] > 0 then
          need = ms_of(redis.call('XPENDING', KEYS[1], group)[2])
        else
          local s = redis.call('XINFO', 'STREAM', KEYS[1])
          local last = nil
          for j = 1, #s, 2 do if s[j] == 'last-generated-id' then last = s[j + 1] end end
          if last == g['last-delivered-id'] then
            need = tonumber(redis.call('TIME')[1]) * 1000
          else
            need = ms_of(g['last-delivered-id'])
          end
        end
      end
    end
  end
  if need == nil or need <= tonumber(deadline) then return {-1} end  -- events at the deadline's ms count
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'c', ARGV[5])
redis.call('HSET', KEYS[5], 'status', 'closed', 'report_id', id, 'closed_ts', ARGV[7], 'closed_by', ARGV[8])
redis.call('ZREM', KEYS[3], coil)
redis.call('SADD', KEYS[4], coil)
return {1, id}
"""

FINISH = r"""#!lua
-- KEYS: meta, log, unwritten. ARGV: coil, tombstone ttl (s)
if redis.call('HGET', KEYS[1], 'status') == 'closed' then
  redis.call('HSET', KEYS[1], 'status', 'done')
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

CLAIM = r"""#!lua
-- KEYS: stream, the heartbeat key of `owner`. ARGV: group, me, owner, count
-- The pending entries (up to count) of `owner`, if its heartbeat key is gone.
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local entries = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[3])
if #entries == 0 then return {} end
local ids = {}
for _, e in ipairs(entries) do table.insert(ids, e[1]) end
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
"""
