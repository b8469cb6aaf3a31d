-- wrk script for bench/api_overhead.py: the headers a moorage call needs, and for a POST a
-- fresh Idempotency-Key and app name on every request (a repeated key would measure
-- replays, a repeated name 409s). Keys and names come from a counter per wrk thread, so
-- they are unique without any randomness in the request loop.
--
--   wrk -t1 -c8 -d5s -s bench/wrk_api.lua URL -- METHOD [TOKEN] [PREFIX]
--
-- PREFIX (a lowercase letter first) keeps names unique across runs on one database.
-- The last line printed is `wrk-json {...}`: requests, seconds, non-2xx/3xx answers,
-- socket errors and latency percentiles in microseconds, for the bench to parse.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

function init(args)
   method = args[1] or "GET"
   prefix = args[3] or "w"
   counter = 0
   base = { ["Host"] = wrk.headers["Host"] }
   if args[2] and args[2] ~= "" then
      base["Authorization"] = "Bearer " .. args[2]
   end
   if method == "POST" then
      base["Content-Type"] = "application/json"
   end
   static = wrk.format(method, nil, base, nil)
end

function request()
   if method ~= "POST" then
      return static
   end
   counter = counter + 1
   local unique = prefix .. tid .. "x" .. counter
   local headers = {}
   for name, value in pairs(base) do
      headers[name] = value
   end
   headers["Idempotency-Key"] = "wrk-" .. unique
   return wrk.format(method, nil, headers, '{"name":"' .. unique .. '"}')
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'wrk-json {"requests":%d,"seconds":%.6f,"status_errors":%d,"socket_errors":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration / 1e6, errors.status,
      errors.connect + errors.read + errors.write + errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
