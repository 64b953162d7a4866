//! Every parser of attacker-controlled text, fed arbitrary input: refresh tokens, session
//! cookies, CSRF tokens, usernames, redirect targets, and access tokens through the full JWT
//! verification. None may panic, hang or allocate without bound.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tessera::domain::clock::Timestamp;
use tessera::domain::cookie::{SessionCookie, check_login_csrf, check_session_csrf};
use tessera::domain::jwt::{KeyRing, Keys, SigningAlg, TokenSettings};
use tessera::domain::refresh::RefreshToken;
use tessera::domain::session::SessionId;
use tessera::domain::user::Username;
use tessera::http::browser::safe_redirect;

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ring = KeyRing::generate(SigningAlg::EdDSA, NOW).expect("key ring");
        let settings = TokenSettings {
            issuer: "https://fuzz.example".into(),
            audience: None,
            ttl: Duration::from_secs(900),
            leeway: Duration::ZERO,
        };
        Keys::from_ring(&ring, &settings, NOW, Duration::from_secs(900)).expect("keys")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = RefreshToken::decode(s, b"fuzz key");
    let _ = SessionCookie::decode(s);
    let _ = check_session_csrf(b"fuzz key", SessionId(Default::default()), s);
    let _ = check_login_csrf(b"fuzz key", "nonce", s, NOW);
    let _ = Username::parse(s);
    let _ = safe_redirect(s, "https://fuzz.example", &["app.example".to_owned()]);
    let _ = keys().verify(s, NOW, Duration::ZERO);
});
