//! Property tests for everything that parses attacker-controlled text: it never panics, and
//! what it accepts round-trips.

use proptest::prelude::*;
use tessera::domain::clock::Timestamp;
use tessera::domain::cookie::{SessionCookie, check_login_csrf};
use tessera::domain::jwt::{KeyRing, Keys, SigningAlg, TokenSettings};
use tessera::domain::refresh::RefreshToken;
use tessera::domain::session::SessionId;
use tessera::domain::user::{UserId, Username};
use tessera::http::browser::safe_redirect;

proptest! {
    #[test]
    fn usernames_parse_to_lowercase_or_refuse(s in ".{0,80}") {
        if let Ok(u) = Username::parse(&s) {
            prop_assert_eq!(u.as_str(), s.to_ascii_lowercase());
            prop_assert!(u.as_str().len() <= 64);
        }
    }

    #[test]
    fn refresh_token_parsing_never_panics_and_rejects_tampering(s in "[ -~]{0,220}", flip in 0usize..150) {
        let key = b"property key";
        let _ = RefreshToken::decode(&s, key);
        let t = RefreshToken::first(UserId::new(), SessionId::new());
        let wire = t.encode(key);
        prop_assert_eq!(RefreshToken::decode(&wire, key), Some(t));
        let mut bytes = wire.clone().into_bytes();
        let i = flip % bytes.len();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        if tampered != wire {
            prop_assert_eq!(RefreshToken::decode(&tampered, key), None);
        }
    }

    #[test]
    fn session_cookie_parsing_never_panics(s in "[ -~]{0,200}") {
        let _ = SessionCookie::decode(&s);
        let c = SessionCookie::new(UserId::new(), SessionId::new());
        prop_assert_eq!(SessionCookie::decode(&c.encode()), Some(c));
    }

    #[test]
    fn login_csrf_checks_never_panic(nonce in "[ -~]{0,60}", token in "[ -~]{0,120}") {
        let _ = check_login_csrf(b"k", &nonce, &token, Timestamp::from_millis(1_800_000_000_000));
    }

    #[test]
    fn redirects_never_leave_for_another_host(rd in "[ -~]{0,80}") {
        if let Some(to) = safe_redirect(&rd, "https://auth.example.com", &[]) {
            prop_assert!(to.starts_with("https://auth.example.com") || (to.starts_with('/') && !to.starts_with("//")), "{}", to);
            prop_assert!(!to.contains('\\'));
        }
    }
}

#[test]
fn jwt_verification_never_panics_on_garbage() {
    let now = Timestamp::from_millis(1_800_000_000_000);
    let ring = KeyRing::generate(SigningAlg::EdDSA, now).unwrap();
    let settings = TokenSettings {
        issuer: "i".into(),
        audience: None,
        ttl: std::time::Duration::from_secs(60),
        leeway: std::time::Duration::ZERO,
    };
    let keys = Keys::from_ring(&ring, &settings, now, std::time::Duration::from_secs(60)).unwrap();
    proptest!(|(s in "[ -~]{0,600}", dots in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5))| {
        let _ = keys.verify(&s, now, std::time::Duration::ZERO);
        let _ = keys.verify(&dots.join("."), now, std::time::Duration::ZERO);
    });
}
