//! Micro-benchmarks of what a verification costs before any I/O: signing and verifying access
//! tokens (EdDSA vs HS256), the verified-token cache key, and the session-cookie and
//! refresh-token codecs.
//!
//!   cargo bench -p tessera --bench tokens

#![allow(clippy::expect_used)] // set-up failures in a benchmark should stop it loudly

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera::domain::clock::Timestamp;
use tessera::domain::cookie::SessionCookie;
use tessera::domain::jwt::{Claims, KeyRing, Keys, SigningAlg, TokenSettings};
use tessera::domain::refresh::RefreshToken;
use tessera::domain::session::SessionId;
use tessera::domain::user::UserId;

fn keys(alg: SigningAlg, now: Timestamp) -> Keys {
    let settings = TokenSettings {
        issuer: "http://tessera.test".into(),
        audience: None,
        ttl: Duration::from_secs(900),
        leeway: Duration::ZERO,
    };
    let ring = KeyRing::generate(alg, now).expect("key ring");
    Keys::from_ring(&ring, &settings, now, Duration::from_secs(3600)).expect("keys")
}

fn claims(now: Timestamp) -> Claims {
    Claims {
        iss: "http://tessera.test".into(),
        sub: UserId::new().to_string(),
        name: "alice".into(),
        sid: SessionId::new().to_string(),
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now.as_secs(),
        exp: now.as_secs() + 900,
        aud: None,
        roles: vec!["admin".into()],
    }
}

fn access_tokens(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_800_000_000_000);
    for (name, alg) in [("EdDSA", SigningAlg::EdDSA), ("HS256", SigningAlg::HS256)] {
        let keys = keys(alg, now);
        let claims = claims(now);
        let token = keys.sign(&claims).expect("sign");
        c.bench_function(&format!("access token sign {name}"), |b| {
            b.iter(|| keys.sign(black_box(&claims)))
        });
        c.bench_function(&format!("access token verify {name}"), |b| {
            b.iter(|| keys.verify(black_box(&token), now, Duration::ZERO))
        });
        c.bench_function(&format!("verified-token cache key (SHA-256) {name}"), |b| {
            b.iter(|| tessera::domain::secret::sha256(black_box(token.as_bytes())))
        });
    }
}

fn codecs(c: &mut Criterion) {
    let now = Timestamp::from_millis(1_800_000_000_000);
    let keys = keys(SigningAlg::HS256, now);
    let cookie = SessionCookie::new(UserId::new(), SessionId::new()).encode();
    c.bench_function("session cookie decode", |b| {
        b.iter(|| SessionCookie::decode(black_box(&cookie)))
    });
    let refresh = RefreshToken::first(UserId::new(), SessionId::new()).encode(keys.mac_key());
    c.bench_function("refresh token decode (MAC check)", |b| {
        b.iter(|| RefreshToken::decode(black_box(&refresh), keys.mac_key()))
    });
}

criterion_group!(benches, access_tokens, codecs);
criterion_main!(benches);
