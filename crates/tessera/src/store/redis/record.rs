//! How one session is kept in Redis: a string holding one line of space-separated fields.
//!
//! `<idle expiry> <absolute expiry> <last seen> <cookie hash> <username> <roles> <created>
//! <generation> <refresh hash> <previous refresh hash> <rotated at> <ip> <user agent>`
//!
//! Times are Unix milliseconds; hashes are SHA-256 in unpadded base64url; `-` stands for an
//! absent cookie hash, previous hash, rotation time or IP. Roles are comma-separated and may be
//! empty (two spaces in a row). The user agent is last because it may hold spaces; an empty one
//! is none. Usernames and role names hold no spaces (see [`Username`], [`Role`]), so the line
//! splits unambiguously, and the Lua scripts read and rewrite it with the same patterns
//! ([`LUA`]).
//!
//! Why a string and not a hash of fields: Redis keeps a hash compact only while every value
//! fits `hash-max-listpack-value` (64 bytes by default), and a browser's user agent, an email
//! address with the times beside it, or a cookie hash does not. Past it the hash takes Redis's
//! large encoding: 706–946 bytes per session measured with the index's share; as one string
//! the same sessions take 402–530 (`bench/run`, see the README), whatever the server's
//! settings.
//!
//! What authentication reads comes first, so a verification parses six fields and stops.
//! Builds before this one kept a session as a hash (first with separate fields, later with
//! the first six packed into its field `u`); every script reads a session through [`LUA`]'s
//! `record`, which rewrites such a hash into the string on first use, so an upgrade logs
//! nobody out.
//!
//! [`Role`]: crate::domain::user::Role

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::StoreError;
use crate::domain::clock::Timestamp;
use crate::domain::session::{ActiveSession, RefreshState, Session, SessionId};
use crate::domain::user::{Roles, UserId, Username};

/// The number of fields in a record.
const FIELDS: usize = 13;

/// A session as its record.
pub(super) fn pack(s: &Session) -> String {
    use std::fmt::Write as _;
    let roles = s.roles.to_csv();
    let ua = s.user_agent.as_deref().unwrap_or("");
    let mut v = String::with_capacity(
        6 * 14 + 3 * 44 + s.username.as_str().len() + roles.len() + ua.len() + 64,
    );
    let _ = write!(
        v,
        "{} {} {} ",
        s.idle_expires_at.as_millis(),
        s.absolute_expires_at.as_millis(),
        s.last_seen_at.as_millis()
    );
    push_hash(&mut v, s.cookie_hash.as_ref());
    let _ = write!(
        v,
        " {} {} {} {} ",
        s.username.as_str(),
        roles,
        s.created_at.as_millis(),
        s.refresh.generation
    );
    push_hash(&mut v, Some(&s.refresh.hash));
    v.push(' ');
    push_hash(&mut v, s.refresh.prev_hash.as_ref());
    v.push(' ');
    match s.refresh.rotated_at {
        Some(t) => {
            let _ = write!(v, "{}", t.as_millis());
        }
        None => v.push('-'),
    }
    v.push(' ');
    v.push_str(s.ip.as_deref().unwrap_or("-"));
    v.push(' ');
    v.push_str(ua);
    v
}

fn push_hash(v: &mut String, h: Option<&[u8; 32]>) {
    match h {
        Some(h) => URL_SAFE_NO_PAD.encode_string(h, v),
        None => v.push('-'),
    }
}

/// What authentication reads: the first six fields. The rest is not parsed (it is on every
/// verification that misses the session cache), only required to be there.
pub(super) fn unpack_active(
    user: UserId,
    id: SessionId,
    v: &[u8],
) -> Result<ActiveSession, StoreError> {
    let mut f = Fields(v.splitn(7, |b| *b == b' '));
    let active = f.active(user, id)?;
    f.next()?;
    Ok(active)
}

/// A whole session, for the session list and refresh rotation.
pub(super) fn unpack(user: UserId, id: SessionId, v: &[u8]) -> Result<Session, StoreError> {
    let mut f = Fields(v.splitn(FIELDS, |b| *b == b' '));
    let active = f.active(user, id)?;
    let created_at = f.time()?;
    let generation = f.text()?.parse().map_err(|_| corrupt())?;
    let hash = f.hash()?.ok_or_else(corrupt)?;
    let prev_hash = f.hash()?;
    let rotated_at = match f.next()? {
        b"-" => None,
        t => Some(time(t)?),
    };
    let ip = match f.text()? {
        "-" => None,
        ip => Some(ip.to_owned()),
    };
    let user_agent = Some(f.text()?)
        .filter(|ua| !ua.is_empty())
        .map(str::to_owned);
    Ok(Session {
        id,
        user_id: user,
        username: active.username,
        roles: active.roles,
        created_at,
        last_seen_at: active.last_seen_at,
        idle_expires_at: active.idle_expires_at,
        absolute_expires_at: active.absolute_expires_at,
        user_agent,
        ip,
        refresh: RefreshState {
            generation,
            hash,
            prev_hash,
            rotated_at,
        },
        cookie_hash: active.cookie_hash,
    })
}

fn corrupt() -> StoreError {
    StoreError::Unexpected(anyhow::anyhow!("corrupt redis session record"))
}

/// Milliseconds as the record writes them: decimal digits, optionally after a `-`. Parsed from
/// the bytes: three per verification, and going through `str` (UTF-8 check, then `parse`) cost
/// ~280 instructions each under callgrind.
fn time(v: &[u8]) -> Result<Timestamp, StoreError> {
    let (negative, digits) = match v {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() {
        return Err(corrupt());
    }
    let mut ms: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(corrupt());
        }
        let digit = i64::from(d - b'0');
        ms = ms
            .checked_mul(10)
            .and_then(|m| {
                if negative {
                    m.checked_sub(digit)
                } else {
                    m.checked_add(digit)
                }
            })
            .ok_or_else(corrupt)?;
    }
    Ok(Timestamp::from_millis(ms))
}

/// The fields of a record, in order.
struct Fields<'a, P: FnMut(&u8) -> bool>(std::slice::SplitN<'a, u8, P>);

impl<'a, P: FnMut(&u8) -> bool> Fields<'a, P> {
    fn next(&mut self) -> Result<&'a [u8], StoreError> {
        self.0.next().ok_or_else(corrupt)
    }

    fn text(&mut self) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.next()?).map_err(|_| corrupt())
    }

    fn time(&mut self) -> Result<Timestamp, StoreError> {
        time(self.next()?)
    }

    /// A hash, or `-` for none.
    fn hash(&mut self) -> Result<Option<[u8; 32]>, StoreError> {
        match self.next()? {
            b"-" => Ok(None),
            // 43 characters are 32 bytes and two spare bits, which must be zero (the decoder
            // refuses anything else): one hash has exactly one text.
            v if v.len() == 43 => {
                let mut h = [0u8; 32];
                match URL_SAFE_NO_PAD.decode_slice(v, &mut h) {
                    Ok(32) => Ok(Some(h)),
                    _ => Err(corrupt()),
                }
            }
            _ => Err(corrupt()),
        }
    }

    fn active(&mut self, user: UserId, id: SessionId) -> Result<ActiveSession, StoreError> {
        let idle_expires_at = self.time()?;
        let absolute_expires_at = self.time()?;
        let last_seen_at = self.time()?;
        let cookie_hash = self.hash()?;
        let username = Username::parse(self.text()?).map_err(|_| corrupt())?;
        let roles = Roles::from_csv(self.text()?);
        Ok(ActiveSession {
            id,
            user_id: user,
            username,
            roles,
            last_seen_at,
            idle_expires_at,
            absolute_expires_at,
            cookie_hash,
        })
    }
}

/// The Lua side of the record, prepended to every script that reads a session:
/// - `record(key)`: the record, or false when the key holds no session. A hash written by an
///   earlier build is rewritten into the record first (its expiry kept).
/// - `auth(key)`: a session's idle and absolute expiry (as numbers), its last-seen time and the
///   rest of the record (from the cookie hash on, as strings), or nothing.
pub(super) const LUA: &str = r"
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
local function b64(s)
  local out = {}
  for j = 1, #s, 3 do
    local a, b, c = string.byte(s, j, j + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    for d = 1, 2 + (b and 1 or 0) + (c and 1 or 0) do
      local x = math.floor(n / 2 ^ (24 - 6 * d)) % 64
      out[#out + 1] = string.sub(B64, x + 1, x + 1)
    end
  end
  return table.concat(out)
end
local function upgrade(key)
  local flat = redis.call('HGETALL', key)
  local f = {}
  for j = 1, #flat, 2 do f[flat[j]] = flat[j + 1] end
  local u = f['u']
  if not u then return false end
  local i, a, l, k, name, roles
  if string.find(u, ' ', 1, true) then
    i, a, l, k, name, roles = string.match(u, '^(%d+) (%d+) (%d+) (%S+) (%S+) (%S*)$')
    if k and k ~= '-' then
      k = b64((string.gsub(k, '..', function(x) return string.char(tonumber(x, 16)) end)))
    end
  else
    i, a, l, k, name, roles = f['i'], f['a'], f['l'], '-', u, f['r'] or ''
    if f['k'] then k = b64(f['k']) end
  end
  if not (i and a and l and f['c'] and f['g'] and f['h']) then return false end
  local v = table.concat({i, a, l, k, name, roles, f['c'], f['g'], b64(f['h']),
    f['p'] and b64(f['p']) or '-', f['t'] or '-', f['ip'] or '-', f['ua'] or ''}, ' ')
  redis.call('SET', key, v, 'KEEPTTL')
  return v
end
local function record(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'table' and v.err then return upgrade(key) end
  return v
end
local function auth(key)
  local v = record(key)
  if not v then return nil end
  local i, a, l, rest = string.match(v, '^(%d+) (%d+) (%d+) (.*)$')
  if not i then return nil end
  return tonumber(i), tonumber(a), l, rest
end
";

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails on the first unexpected value"
)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_from_bytes_as_i64_parses_them_and_anything_else_is_corrupt() {
        let max = i64::MAX.to_string();
        let min = i64::MIN.to_string();
        for text in ["0", "1700000000123", "-1", "-0", "007", &max, &min] {
            let parsed = time(text.as_bytes()).map(Timestamp::as_millis).ok();
            assert_eq!(parsed, text.parse::<i64>().ok(), "{text}");
            assert!(parsed.is_some(), "{text}");
        }
        let over = "9223372036854775808";
        let under = "-9223372036854775809";
        for bad in [
            &b""[..],
            b"-",
            b"+5",
            b" 5",
            b"5 ",
            b"5a",
            b"1.5",
            b"\xff1",
            over.as_bytes(),
            under.as_bytes(),
        ] {
            assert!(time(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn ids() -> (UserId, SessionId) {
        (UserId::new(), SessionId::new())
    }

    fn sample(cookie_hash: Option<[u8; 32]>, roles: &str) -> Session {
        let at = Timestamp::from_millis;
        let (user_id, id) = ids();
        Session {
            id,
            user_id,
            username: Username::parse("alice.b@example-1").unwrap(),
            roles: Roles::from_csv(roles),
            created_at: at(1_700_000_000_000),
            last_seen_at: at(1_700_000_000_500),
            idle_expires_at: at(1_700_001_800_500),
            absolute_expires_at: at(1_702_592_000_000),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
            ip: Some("192.0.2.1".into()),
            refresh: RefreshState {
                generation: 3,
                hash: [7; 32],
                prev_hash: None,
                rotated_at: None,
            },
            cookie_hash,
        }
    }

    /// A record reads back as written, whole and as what authentication reads: with and
    /// without a cookie, roles, a rotation, an IP or a user agent (one with spaces).
    #[test]
    fn a_record_round_trips() {
        let rotated = |mut s: Session| {
            s.refresh.prev_hash = Some([0xfe; 32]);
            s.refresh.rotated_at = Some(Timestamp::from_millis(1_700_000_000_900));
            s
        };
        let bare = |mut s: Session| {
            s.ip = None;
            s.user_agent = None;
            s
        };
        for s in [
            sample(None, ""),
            sample(Some([0xa5; 32]), "admin"),
            rotated(sample(Some([0; 32]), "admin,ops:read,x.y-z")),
            bare(sample(None, "admin")),
            bare(rotated(sample(Some([0xff; 32]), ""))),
        ] {
            let v = pack(&s);
            assert_eq!(unpack(s.user_id, s.id, v.as_bytes()).unwrap(), s, "{v}");
            let active = unpack_active(s.user_id, s.id, v.as_bytes()).unwrap();
            assert_eq!(active, s.active(), "{v}");
        }
    }

    /// The layout, pinned: the Lua scripts and records already in Redis depend on it.
    #[test]
    fn a_record_is_one_line_in_the_documented_order() {
        let mut s = sample(Some([0xfb; 32]), "admin,ops");
        s.refresh.prev_hash = Some([0; 32]);
        s.refresh.rotated_at = Some(Timestamp::from_millis(1_700_000_000_900));
        let b = |byte: u8| URL_SAFE_NO_PAD.encode([byte; 32]);
        assert_eq!(
            pack(&s),
            format!(
                "1700001800500 1702592000000 1700000000500 {} alice.b@example-1 admin,ops \
                 1700000000000 3 {} {} 1700000000900 192.0.2.1 Mozilla/5.0 (X11; Linux x86_64)",
                b(0xfb),
                b(7),
                b(0)
            )
        );
    }

    /// A session key holding something else than a record (another writer, a damaged value)
    /// must be a store error, never a panic and never an authenticated session.
    #[test]
    fn values_that_are_not_a_whole_record_are_refused() {
        let (user, id) = ids();
        let h = URL_SAFE_NO_PAD.encode([7; 32]);
        let good = format!("1000 9000 500 - alice admin 100 0 {h} - - - ");
        assert!(unpack(user, id, good.as_bytes()).is_ok());
        let mut bad_bits = h.clone();
        bad_bits.replace_range(42.., "B"); // a last character with a spare bit set
        for bad in [
            String::new(),
            "1000 9000 500 - alice admin".into(), // nothing after the roles
            "1000 9000 - alice admin 100 0".into(), // a time missing
            format!("soon 9000 500 - alice admin 100 0 {h} - - - "), // not a time
            format!("1000 9000 500 abcd alice admin 100 0 {h} - - - "), // a short cookie hash
            format!("1000 9000 500 {bad_bits} alice admin 100 0 {h} - - - "), // not canonical
            format!("1000 9000 500 - Al!ce admin 100 0 {h} - - - "), // not a username
            format!("1000 9000 500 - alice admin 100 x {h} - - - "), // not a generation
            "1000 9000 500 - alice admin 100 0 - - - - ".into(), // no refresh hash
            format!("1000 9000 500 - alice admin 100 0 {h} - -"), // fields missing
        ] {
            assert!(unpack(user, id, bad.as_bytes()).is_err(), "{bad:?}");
        }
        for bad in ["", "1000 9000 500 - alice admin", "1000 9000 500 - alice"] {
            assert!(unpack_active(user, id, bad.as_bytes()).is_err(), "{bad:?}");
        }
        let not_utf8 = format!("1000 9000 500 - \u{1} admin 100 0 {h} - - - ");
        let mut not_utf8 = not_utf8.into_bytes();
        not_utf8[16] = 0xff;
        assert!(unpack_active(user, id, &not_utf8).is_err());
    }
}
