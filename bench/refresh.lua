-- wrk script for refresh-token rotation: every request redeems a refresh token and the
-- response's successor goes back into the pool, so each connection walks its own chain (a
-- reused token would measure the grace path or reuse detection instead).
--   REFRESH_TOKENS  space-separated refresh tokens, one per connection plus one (wrk calls
--                   request() once at start-up without sending what it returns)
local pool = {}
for t in string.gmatch(os.getenv("REFRESH_TOKENS") or "", "%S+") do pool[#pool + 1] = t end

function request()
  local token = table.remove(pool) or "tsr1.exhausted"
  return wrk.format("POST", nil, { ["Content-Type"] = "application/x-www-form-urlencoded" },
    "grant_type=refresh_token&refresh_token=" .. token)
end

function response(status, headers, body)
  local next_token = body and string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
  if next_token then pool[#pool + 1] = next_token end
end

-- The summary line the bench scripts parse, from the file beside this one.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")
