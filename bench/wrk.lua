-- wrk script for the tessera benchmark: sends the credential from the environment and prints
-- one JSON line with the figures the harness needs.
--   AUTH_HEADER  e.g. "Bearer eyJ..." (sent as Authorization)
--   COOKIE       e.g. "tessera_session=tss1...." (sent as Cookie)
--   METHOD, BODY, CONTENT_TYPE for POST benchmarks (login)
local auth = os.getenv("AUTH_HEADER")
local cookie = os.getenv("COOKIE")
local method = os.getenv("METHOD") or "GET"
local body = os.getenv("BODY")
local ctype = os.getenv("CONTENT_TYPE")

function request()
  local headers = {}
  if auth and auth ~= "" then headers["Authorization"] = auth end
  if cookie and cookie ~= "" then headers["Cookie"] = cookie end
  if ctype and ctype ~= "" then headers["Content-Type"] = ctype end
  return wrk.format(method, nil, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
