-- wrk script for bench/sidecar.sh: every request carries
-- `Authorization: Bearer <token>`, the tokens taken in turn from the file
-- named by the first script argument (one a line). A file of one line is
-- "one token repeated"; of N lines, N distinct tokens in rotation.
--
-- At the end it prints one line that the bench script parses:
--   BENCH requests=… duration_us=… rps=… p50_us=… p99_us=… p999_us=… max_us=… errors=…
-- errors counts connect/read/write/timeout failures and responses >= 400.

local tokens = {}
local n = 0
local i = 0

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk -s wrk-tokens.lua URL -- TOKENS_FILE")
  end
  for line in io.lines(path) do
    if #line > 0 then
      n = n + 1
      tokens[n] = "Bearer " .. line
    end
  end
  if n == 0 then
    error("no tokens in " .. path)
  end
  -- Each wrk thread starts at a different place in the rotation.
  i = math.random(0, n - 1)
end

function request()
  i = i % n + 1
  return wrk.format("GET", "/", { ["Authorization"] = tokens[i] })
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
