use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

async fn token_body(res: reqwest::Response) -> Value {
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

#[tokio::test]
async fn refresh_rotates_and_the_new_tokens_work() {
    let app = spawn_app().await;
    let t = app.user_session("ivy").await;
    let body = token_body(app.refresh(&t.refresh).await).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let next = body["refresh_token"].as_str().unwrap();
    assert_ne!(next, t.refresh);
    assert_eq!(
        app.verify_status(body["access_token"].as_str().unwrap())
            .await,
        StatusCode::OK
    );
    // The successor rotates again.
    token_body(app.refresh(next).await).await;
}

#[tokio::test]
async fn a_duplicate_refresh_within_the_grace_window_gets_the_same_successor() {
    let app = spawn_app().await;
    let t = app.user_session("jack").await;
    let first = token_body(app.refresh(&t.refresh).await).await;
    app.advance(Duration::from_secs(9));
    let second = token_body(app.refresh(&t.refresh).await).await;
    assert_eq!(first["refresh_token"], second["refresh_token"]);
    assert_eq!(
        app.verify_status(second["access_token"].as_str().unwrap())
            .await,
        StatusCode::OK
    );
    // The successor still works: nothing was revoked.
    token_body(app.refresh(first["refresh_token"].as_str().unwrap()).await).await;
}

#[tokio::test]
async fn reusing_a_rotated_token_after_the_grace_window_revokes_the_session() {
    let app = spawn_app().await;
    let t = app.user_session("kate").await;
    let next = token_body(app.refresh(&t.refresh).await).await;
    app.advance(Duration::from_secs(11));

    let res = app.refresh(&t.refresh).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].is_string() && body["detail"].is_string());

    // The whole family is dead: the successor and the access tokens too.
    assert_eq!(
        app.refresh(next["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.verify_status(next["access_token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn presenting_a_token_two_generations_old_revokes_even_inside_the_grace_window() {
    let app = spawn_app().await;
    let t = app.user_session("liam").await;
    let g1 = token_body(app.refresh(&t.refresh).await).await;
    token_body(app.refresh(g1["refresh_token"].as_str().unwrap()).await).await;
    assert_eq!(
        app.refresh(&t.refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_forged_refresh_token_for_a_known_session_does_not_revoke_it() {
    let app = spawn_app().await;
    let t = app.user_session("mia").await;
    // Same user and session ids, generation 0, a made-up secret and tag.
    let mut parts: Vec<String> = t.refresh.split('.').map(str::to_owned).collect();
    parts[4] = URL_SAFE_NO_PAD.encode([7u8; 32]);
    parts[5] = URL_SAFE_NO_PAD.encode([9u8; 16]);
    assert_eq!(
        app.refresh(&parts.join(".")).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    token_body(app.refresh(&t.refresh).await).await;
}

#[tokio::test]
async fn the_password_grant_issues_rfc6749_tokens() {
    let app = spawn_app().await;
    app.add_user("noah", &[]).await;
    let res = app
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "noah"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    let body = token_body(res).await;
    assert_eq!(
        app.verify_status(body["access_token"].as_str().unwrap())
            .await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc6749() {
    let app = spawn_app().await;
    app.add_user("olga", &[]).await;
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("grant_type", "password"),
                ("username", "olga"),
                ("password", "wrong password"),
            ],
            "invalid_grant",
        ),
        (
            vec![("grant_type", "password"), ("username", "olga")],
            "invalid_request",
        ),
        (
            vec![("grant_type", "client_credentials")],
            "unsupported_grant_type",
        ),
        (vec![("username", "olga")], "invalid_request"),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "garbage"),
            ],
            "invalid_grant",
        ),
        (vec![("grant_type", "refresh_token")], "invalid_request"),
    ];
    for (form, code) in cases {
        let res = app
            .client
            .post(app.url("/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{form:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], code, "{form:?}");
        assert!(body["error_description"].is_string());
    }
    let res = app
        .post_json("/token", &json!({"grant_type": "password"}))
        .await;
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn an_access_token_stops_working_at_exp_without_leeway() {
    let app = spawn_app_with(&[("TESSERA_ACCESS_TOKEN_TTL", "2m")]).await;
    let t = app.user_session("pia").await;
    app.advance(Duration::from_secs(119));
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    app.advance(Duration::from_secs(1));
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn jwt_leeway_extends_acceptance_past_exp() {
    let app = spawn_app_with(&[
        ("TESSERA_ACCESS_TOKEN_TTL", "2m"),
        ("TESSERA_JWT_LEEWAY", "30s"),
    ])
    .await;
    let t = app.user_session("quin").await;
    app.advance(Duration::from_secs(125));
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    app.advance(Duration::from_secs(30));
    assert_eq!(app.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
}

fn claims(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let c = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

#[tokio::test]
async fn access_tokens_carry_the_contract_claims_and_verify_against_the_jwks() {
    let app = spawn_app_with(&[("TESSERA_PUBLIC_URL", "https://auth.example.test/")]).await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    let (header, c) = claims(&t.access);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(c["iss"], "https://auth.example.test");
    assert_eq!(c["name"], "admin");
    assert!(c.get("aud").is_none());
    for k in ["sub", "sid", "jti"] {
        assert!(c[k].is_string(), "{k}");
    }
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 900);
    let verify = app.get_auth("/verify", &t.access).await;
    assert_eq!(
        verify.headers()["x-auth-session"].to_str().unwrap(),
        c["sid"]
    );
    assert_eq!(
        verify.headers()["x-auth-user-id"].to_str().unwrap(),
        c["sub"]
    );

    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let jwk = set
        .find(header["kid"].as_str().unwrap())
        .expect("kid published");
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert_eq!(jwks["keys"][0]["use"], "sig");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_issuer(&["https://auth.example.test"]);
    jsonwebtoken::decode::<Value>(&t.access, &key, &v).expect("verifies with the published key");
}

#[tokio::test]
async fn audience_is_issued_and_required_when_configured() {
    let app = spawn_app_with(&[("TESSERA_AUDIENCE", "orders-api")]).await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(claims(&t.access).1["aud"], "orders-api");
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
}

#[tokio::test]
async fn hs256_mode_signs_with_a_generated_secret_and_publishes_no_key() {
    let app = spawn_app_with(&[("TESSERA_SIGNING_ALG", "HS256")]).await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(claims(&t.access).0["alg"], "HS256");
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, json!({"keys": []}));
}

#[tokio::test]
async fn hostile_tokens_are_401_never_500() {
    let app = spawn_app().await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    let (header, body) = claims(&t.access);
    let sig = t.access.rsplit('.').next().unwrap();
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let mut none = header.clone();
    none["alg"] = json!("none");
    let mut hs = header.clone();
    hs["alg"] = json!("HS256");
    let mut elevated = body.clone();
    elevated["sub"] = json!("00000000-0000-0000-0000-000000000000");
    let mut jku = header.clone();
    jku["jku"] = json!("https://evil.example/jwks.json");
    jku["kid"] = json!("attacker");
    let cases = vec![
        format!("{}.{}.", enc(&none), enc(&body)),
        format!("{}.{}.{sig}", enc(&hs), enc(&body)),
        format!("{}.{}.{sig}", enc(&header), enc(&elevated)),
        format!("{}.{}.{sig}", enc(&jku), enc(&body)),
        "not.a.jwt".to_owned(),
        "a".repeat(10_000),
        String::new(),
        t.refresh.clone(),
    ];
    for token in cases {
        let res = app
            .client
            .get(app.url("/verify"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{token:.60}");
    }
    // The real token is unaffected.
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
}

#[tokio::test]
async fn a_token_from_another_installation_is_refused() {
    let a = spawn_app().await;
    let b = spawn_app().await;
    let t = a.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(b.verify_status(&t.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        b.refresh(&t.refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_verified_token_cache_never_accepts_a_changed_token() {
    let app = spawn_app().await;
    let t = app.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK); // now cached
    let (head_payload, sig) = t.access.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[0] ^= 1;
    let bad_sig = format!("{head_payload}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    assert_eq!(app.verify_status(&bad_sig).await, StatusCode::UNAUTHORIZED);
    let (header, claims) = super::tokens::claims(&t.access);
    let mut longer = claims.clone();
    longer["exp"] = json!(claims["exp"].as_i64().unwrap() + 3600);
    let forged = format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&longer).unwrap())
    );
    assert_eq!(app.verify_status(&forged).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.verify_status(&t.access).await, StatusCode::OK);
    app.advance(Duration::from_secs(900));
    assert_eq!(
        app.verify_status(&t.access).await,
        StatusCode::UNAUTHORIZED,
        "a cached token still dies at exp"
    );
}
