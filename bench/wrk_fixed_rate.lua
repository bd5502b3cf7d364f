-- A fixed request rate for wrk 4.1 (which has no rate flag): bench/api.py's GET and POST load.
--
--   wrk -tT -c64 -d30s -s bench/wrk_fixed_rate.lua URL -- RATE T [METHOD BODY_FILE]
--
-- (T: the -t given to wrk, which init() is not told.) Each wrk thread keeps one schedule, a
-- slot every T/RATE s, and every request takes the next slot of its thread's schedule:
-- delay() holds a freed connection until its slot. wrk times a request from when it is
-- written, so a request whose slot had passed before any connection was free (every
-- connection waiting on the server) would hide that wait: delay() records it as the slot's
-- lateness, reported beside wrk's latency. With enough connections (64 at 500/s: 128 ms of
-- requests in flight) lateness stays zero unless the server stalls, and wrk's percentiles
-- then are an open loop's. done() prints one JSON line starting "WRK_JSON ".
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } wrk_timespec;
int clock_gettime(int clk_id, wrk_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("wrk_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per thread (each wrk thread has its own Lua state and its share of the rate).
local interval_ms, next_slot_ms
late = {}
slots = 0

function init(args)
  local rate = tonumber(args[1])
  if rate == nil or rate <= 0 then
    error("wrk_fixed_rate.lua: give the rate per second after --")
  end
  interval_ms = 1000 * (tonumber(args[2]) or 1) / rate
  if args[3] then
    wrk.method = args[3]
  end
  if args[4] then
    local file = assert(io.open(args[4], "rb"))
    wrk.body = file:read("*a")
    file:close()
    wrk.headers["Content-Type"] = "application/json"
  end
end

function delay()
  local now = now_ms()
  if next_slot_ms == nil then
    next_slot_ms = now + 50 -- the first slot: once the connections are up
  end
  local slot = next_slot_ms
  next_slot_ms = slot + interval_ms
  slots = slots + 1
  local wait = slot - now
  if wait < 0 then
    late[#late + 1] = -wait
    return 0
  end
  return math.floor(wait + 0.5)
end

local function percentile(sorted, p)
  if #sorted == 0 then
    return 0
  end
  local i = math.max(1, math.ceil(#sorted * p / 100))
  return sorted[i]
end

function done(summary, latency, requests)
  local lateness, total_slots = {}, 0
  for _, thread in ipairs(threads) do
    for _, v in ipairs(thread:get("late")) do
      lateness[#lateness + 1] = v
    end
    total_slots = total_slots + thread:get("slots")
  end
  table.sort(lateness)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.3f, "p50_ms": %.3f, "p90_ms": %.3f, ' ..
    '"p99_ms": %.3f, "p999_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f, "late_n": %d, ' ..
    '"late_p99_ms": %.3f, "late_max_ms": %.3f, "slots": %d, "errors_connect": %d, ' ..
    '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, latency.mean / 1000, #lateness,
    percentile(lateness, 99), lateness[#lateness] or 0, total_slots, errors.connect,
    errors.read, errors.write, errors.status, errors.timeout))
end
