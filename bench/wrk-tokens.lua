-- wrk script for bench/sidecar.sh: every request carries
-- `Authorization: Bearer <token>`, the tokens taken in turn from the file
-- named by the first script argument (one a line). A file of one line is
-- "one token repeated"; of N lines, N distinct tokens in rotation.
-- A second argument N > 0 makes every request a POST with a body of N
-- bytes (`Content-Type: application/octet-stream`); without it, a GET.
--
-- The load generator must not be the bottleneck: with one token the
-- request is static (wrk builds it once); with several, every request is
-- formatted once in init and request() only picks the next.
--
-- At the end it prints one line that the bench script parses:
--   BENCH requests=… duration_us=… rps=… p50_us=… p99_us=… p999_us=… max_us=… errors=…
-- errors counts connect/read/write/timeout failures and responses >= 400.

local requests = {}
local n = 0
local i = 0

local function next_request()
  i = i % n + 1
  return requests[i]
end

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk -s wrk-tokens.lua URL -- TOKENS_FILE [BODY_BYTES]")
  end
  local size = tonumber(args[2] or "0")
  if size == nil or size < 0 then
    error("BODY_BYTES is not a count of bytes: " .. args[2])
  end
  local method, body, headers = "GET", nil, {}
  if size > 0 then
    method, body = "POST", string.rep("x", size)
    headers["Content-Type"] = "application/octet-stream"
  end
  local tokens = {}
  for line in io.lines(path) do
    if #line > 0 then
      tokens[#tokens + 1] = "Bearer " .. line
    end
  end
  n = #tokens
  if n == 0 then
    error("no tokens in " .. path)
  elseif n == 1 then
    headers["Authorization"] = tokens[1]
    wrk.method, wrk.body = method, body
    for name, value in pairs(headers) do
      wrk.headers[name] = value
    end
  else
    for k = 1, n do
      headers["Authorization"] = tokens[k]
      requests[k] = wrk.format(method, "/", headers, body)
    end
    -- Each wrk thread starts at a different place in the rotation.
    i = math.random(0, n - 1)
    request = next_request
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d\n",
    summary.requests, summary.duration,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
