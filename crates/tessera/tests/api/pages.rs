//! The pages and every cookie and CSRF rule, at the HTTP level.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const SESSION: &str = "tessera_session";

fn location(res: &reqwest::Response) -> &str {
    res.headers()["location"].to_str().unwrap()
}

#[tokio::test]
async fn the_login_page_is_a_form_with_a_csrf_token_and_strict_headers() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    let res = b.get("/").await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("referrer-policy"));
    assert_eq!(h["cache-control"], "no-store");
    let set_cookie = h["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let html = res.text().await.unwrap();
    assert!(hidden(&html, "csrf_token").is_some());
    for needle in [
        "name=\"username\"",
        "name=\"password\"",
        "<label for=\"username\">",
        "<label for=\"password\">",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    assert!(!html.contains("<script"), "no script at all");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no off-host URL"
    );
    let css = b.get("/static/tessera.css").await;
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
}

#[tokio::test]
async fn signing_in_with_the_form_sets_an_http_only_cookie_and_shows_the_dashboard() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    let res = b.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/dashboard");
    let set = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(SESSION))
        .unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain http: no Secure");
    let value = b.cookie(SESSION).unwrap();
    assert!(
        value.starts_with("tss1.") && !value.starts_with("ey"),
        "an opaque secret, never a JWT"
    );

    let res = b.get("/dashboard").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let html = res.text().await.unwrap();
    assert!(html.contains("Welcome admin"));
    assert!(html.contains("This device") && html.contains("Firefox on Linux"));
    assert!(meta_csrf(&html).is_some());
    assert_eq!(location(&b.get("/").await), "/dashboard");

    // The cookie authenticates the JSON routes and forward-auth too.
    let res = app
        .client
        .get(app.url("/profile"))
        .header("cookie", format!("{SESSION}={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["username"], "admin");
    let res = app
        .client
        .get(app.url("/verify"))
        .header("cookie", format!("{SESSION}={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-auth-user"], "admin");
}

#[tokio::test]
async fn behind_https_the_cookie_is_secure_and_host_prefixed() {
    let app = spawn_app_with(&[("TESSERA_PUBLIC_URL", "https://auth.example.test")]).await;
    let b = Browser::new(&app);
    let res = b.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let set: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("__Host-tessera_session="))
        .expect("__Host- cookie");
    assert!(
        session.contains("Secure") && session.contains("Path=/") && !session.contains("Domain")
    );
}

#[tokio::test]
async fn the_login_form_refuses_missing_foreign_and_expired_csrf_tokens() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    b.get("/login").await;
    let res = b
        .post_form(
            "/login",
            &[("username", "admin"), ("password", ADMIN_PASSWORD)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let html = res.text().await.unwrap();
    assert!(
        hidden(&html, "csrf_token").is_some(),
        "the form comes back with a fresh token"
    );
    assert!(b.cookie(SESSION).is_none());

    // A token from another browser (login CSRF: the attacker's own form) does not fit this one.
    let attacker = Browser::new(&app);
    let token = hidden(
        &attacker.get("/login").await.text().await.unwrap(),
        "csrf_token",
    )
    .unwrap();
    let res = b
        .post_form(
            "/login",
            &[
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let page = b.get("/login").await.text().await.unwrap();
    let token = hidden(&page, "csrf_token").unwrap();
    app.advance(Duration::from_secs(3 * 3600));
    let res = b
        .post_form(
            "/login",
            &[
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let html = res.text().await.unwrap();
    assert!(html.contains("expired"));
    let fresh = hidden(&html, "csrf_token").unwrap();
    let res = b
        .post_form(
            "/login",
            &[
                ("username", "admin"),
                ("password", ADMIN_PASSWORD),
                ("csrf_token", &fresh),
            ],
        )
        .await;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "the re-rendered form works"
    );
}

#[tokio::test]
async fn bad_credentials_and_throttling_show_helpful_messages() {
    let app = spawn_app_with(&[("TESSERA_LOGIN_MAX_FAILURES", "2")]).await;
    let b = Browser::new(&app);
    let res = b.sign_in("admin", "wrong password").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let html = res.text().await.unwrap();
    assert!(html.contains("Invalid username or password"));
    assert!(html.contains("value=\"admin\""), "the username is kept");
    b.sign_in("nobody", "wrong password").await;
    b.sign_in("admin", "wrong password").await;
    let res = b.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert!(res.text().await.unwrap().contains("Try again in"));
}

#[tokio::test]
async fn every_login_gets_a_new_session_cookie_so_a_planted_one_is_never_adopted() {
    let app = spawn_app().await;
    app.add_user("mallory", &[]).await;
    let attacker = Browser::new(&app);
    attacker.sign_in("mallory", PASSWORD).await;
    let planted = attacker.cookie(SESSION).unwrap();

    let victim = Browser::new(&app);
    victim
        .cookies
        .lock()
        .unwrap()
        .insert(SESSION.into(), planted.clone());
    let res = victim.sign_in("admin", ADMIN_PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let now = victim.cookie(SESSION).unwrap();
    assert_ne!(now, planted);
    assert!(
        victim
            .get("/dashboard")
            .await
            .text()
            .await
            .unwrap()
            .contains("Welcome admin")
    );
    assert!(
        attacker
            .get("/dashboard")
            .await
            .text()
            .await
            .unwrap()
            .contains("Welcome mallory")
    );
}

#[tokio::test]
async fn rd_is_followed_only_to_this_site_or_allowed_hosts() {
    let app = spawn_app_with(&[("TESSERA_ALLOWED_REDIRECT_HOSTS", "app.example.test")]).await;
    let cases = [
        ("/after?x=1", "/after?x=1"),
        ("http://tessera.test/here", "http://tessera.test/here"),
        (
            "https://app.example.test/home",
            "https://app.example.test/home",
        ),
        ("//evil.test/", "/dashboard"),
        ("https://evil.test/", "/dashboard"),
        ("https://app.example.test.evil.test/", "/dashboard"),
        ("javascript:alert(1)", "/dashboard"),
    ];
    for (rd, expected) in cases {
        let b = Browser::new(&app);
        let page = b
            .get(&format!("/login?rd={}", urlencode(rd)))
            .await
            .text()
            .await
            .unwrap();
        let carried = hidden(&page, "rd");
        let token = hidden(&page, "csrf_token").unwrap();
        let mut form = vec![
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
            ("csrf_token", token.as_str()),
        ];
        form.push(("rd", rd)); // what an attacker would post, whatever the page carried
        let res = b.post_form("/login", &form).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&res), expected, "rd={rd}");
        assert_eq!(
            carried.is_some(),
            expected != "/dashboard",
            "rd={rd} carried={carried:?}"
        );
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn cookie_authenticated_unsafe_requests_need_the_session_csrf_token() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    b.sign_in("admin", ADMIN_PASSWORD).await;
    let cookie = format!("{SESSION}={}", b.cookie(SESSION).unwrap());
    let token = b.csrf().await;

    let other = Browser::new(&app);
    other.sign_in("admin", ADMIN_PASSWORD).await;
    let foreign_token = other.csrf().await;

    let logout = |headers: Vec<(&'static str, String)>| {
        let mut req = app
            .client
            .post(app.url("/logout"))
            .header("cookie", &cookie)
            .json(&json!({}));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let refusals = vec![
        vec![],
        vec![("x-csrf-token", "garbage".to_owned())],
        vec![("x-csrf-token", foreign_token.clone())],
        vec![
            ("x-csrf-token", token.clone()),
            ("origin", "http://evil.test".to_owned()),
        ],
        vec![
            ("x-csrf-token", token.clone()),
            ("sec-fetch-site", "cross-site".to_owned()),
        ],
        vec![
            ("x-csrf-token", token.clone()),
            ("sec-fetch-site", "same-site".to_owned()),
        ],
    ];
    for headers in refusals {
        let res = logout(headers.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(error_code(res).await, "csrf_failed");
    }
    assert_eq!(
        b.get("/dashboard").await.status(),
        StatusCode::OK,
        "still signed in"
    );

    // Chromium under Referrer-Policy: no-referrer: Origin null, Sec-Fetch-Site same-origin.
    let res = logout(vec![
        ("x-csrf-token", token.clone()),
        ("origin", "null".to_owned()),
        ("sec-fetch-site", "same-origin".to_owned()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cleared = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with(SESSION) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(b.get("/dashboard").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_form_post_without_the_token_is_refused_with_a_page() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    b.sign_in("admin", ADMIN_PASSWORD).await;
    let res = b.post_form("/logout", &[("scope", "current")]).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("expired"));
    let res = b
        .post_form_with(
            "/logout",
            &[("scope", "current"), ("csrf_token", &b.csrf().await)],
            &[("origin", "http://evil.test")],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(b.get("/dashboard").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_logout_form_clears_the_cookie_and_redirects_by_scope() {
    let app = spawn_app().await;
    let phone = Browser::new(&app);
    phone.sign_in("admin", ADMIN_PASSWORD).await;
    let laptop = Browser::new(&app);
    laptop.sign_in("admin", ADMIN_PASSWORD).await;

    let res = laptop
        .post_form(
            "/logout",
            &[("scope", "others"), ("csrf_token", &laptop.csrf().await)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(location(&res).starts_with("/dashboard"));
    assert_eq!(
        phone.get("/dashboard").await.status(),
        StatusCode::SEE_OTHER,
        "the phone is logged out"
    );
    assert_eq!(laptop.get("/dashboard").await.status(), StatusCode::OK);

    let res = laptop
        .post_form("/logout", &[("csrf_token", &laptop.csrf().await)])
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), "/login");
    assert!(laptop.cookie(SESSION).is_none(), "cookie cleared");
}

#[tokio::test]
async fn revoking_a_device_from_the_dashboard_logs_it_out() {
    let app = spawn_app().await;
    let first = Browser::new(&app);
    first.sign_in("admin", ADMIN_PASSWORD).await;
    let second = Browser::new(&app);
    second.sign_in("admin", ADMIN_PASSWORD).await;

    let page = first.get("/dashboard").await.text().await.unwrap();
    let token = meta_csrf(&page).unwrap();
    const ID: &str = "data-session-id=\"";
    const CURRENT: &str = "session current\" data-session-id=\"";
    let ids: Vec<&str> = page
        .match_indices(ID)
        .map(|(i, _)| &page[i + ID.len()..i + ID.len() + 36])
        .collect();
    assert_eq!(ids.len(), 2);
    let current = page
        .find(CURRENT)
        .map(|i| &page[i + CURRENT.len()..i + CURRENT.len() + 36])
        .unwrap();
    let other = ids.iter().find(|id| **id != current).unwrap();

    let res = first
        .post_form(
            &format!("/sessions/{other}/revoke"),
            &[("csrf_token", &token)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        second.get("/dashboard").await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(first.get("/dashboard").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_change_password_page_changes_it_and_logs_out_other_devices() {
    let app = spawn_app().await;
    app.add_user("paula", &[]).await;
    let b = Browser::new(&app);
    b.sign_in("paula", PASSWORD).await;
    let elsewhere = Browser::new(&app);
    elsewhere.sign_in("paula", PASSWORD).await;

    let page = b.get("/account/password").await;
    assert_eq!(page.status(), StatusCode::OK);
    let token = meta_csrf(&page.text().await.unwrap()).unwrap();
    let res = b
        .post_form(
            "/account/password",
            &[
                ("current_password", "nope nope"),
                ("new_password", "a whole new phrase"),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("current password is wrong")
    );
    let res = b
        .post_form(
            "/account/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "password1"),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let res = b
        .post_form(
            "/account/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "a whole new phrase"),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(
        b.get(location(&res))
            .await
            .text()
            .await
            .unwrap()
            .contains("Your password was changed")
    );
    assert_eq!(
        elsewhere.get("/dashboard").await.status(),
        StatusCode::SEE_OTHER
    );
    app.login("paula", "a whole new phrase").await;
}

#[tokio::test]
async fn anonymous_pages_redirect_to_the_login_page() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    for path in ["/dashboard", "/account/password"] {
        let res = b.get(path).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(location(&res), "/login");
    }
    // A stale cookie is just "signed out".
    b.cookies
        .lock()
        .unwrap()
        .insert(SESSION.into(), "tss1.garbage".into());
    assert_eq!(b.get("/dashboard").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(b.get("/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn registration_pages_follow_the_setting() {
    let closed = spawn_app().await;
    assert_eq!(
        Browser::new(&closed).get("/register").await.status(),
        StatusCode::NOT_FOUND
    );

    let app = spawn_app_with(&[("TESSERA_ALLOW_REGISTRATION", "true")]).await;
    let b = Browser::new(&app);
    let page = b.get("/register").await.text().await.unwrap();
    let token = hidden(&page, "csrf_token").unwrap();
    let res = b
        .post_form(
            "/register",
            &[
                ("username", "newbie"),
                ("password", "password"),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = b
        .post_form(
            "/register",
            &[("username", "newbie"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "login CSRF applies");
    let token = hidden(&res.text().await.unwrap(), "csrf_token").expect("a fresh form");
    let res = b
        .post_form(
            "/register",
            &[
                ("username", "newbie"),
                ("password", PASSWORD),
                ("csrf_token", &token),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(location(&res).starts_with("/login"));
    assert!(b.cookie(SESSION).is_none(), "registration does not sign in");
    assert_eq!(
        b.sign_in("newbie", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn json_routes_accept_the_cookie_with_the_csrf_header() {
    let app = spawn_app().await;
    let b = Browser::new(&app);
    b.sign_in("admin", ADMIN_PASSWORD).await;
    let token = b.csrf().await;
    let cookie = format!("{SESSION}={}", b.cookie(SESSION).unwrap());
    let res = app
        .client
        .get(app.url("/sessions"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let sessions: Value = res.json().await.unwrap();
    let id = sessions["sessions"][0]["id"].as_str().unwrap().to_owned();
    let res = app
        .client
        .delete(app.url(&format!("/sessions/{id}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no token");
    let res = app
        .client
        .delete(app.url(&format!("/sessions/{id}")))
        .header("cookie", &cookie)
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

/// A cookie that names a live session (its user and session ids are not secret) but carries
/// another secret is refused by every route that reads the cookie, and does not disturb the
/// real one.
#[tokio::test]
async fn a_session_cookie_with_the_wrong_secret_is_refused_everywhere() {
    let app = spawn_app().await;
    app.add_user("ida", &[]).await;
    let b = Browser::new(&app);
    b.sign_in("ida", PASSWORD).await;
    let genuine = b.cookie(SESSION).unwrap();
    let (ids, secret) = genuine.rsplit_once('.').unwrap();
    let other = if secret.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{ids}.{other}{}", &secret[1..]);
    for path in ["/verify", "/profile", "/sessions"] {
        for (cookie, expected) in [
            (&forged, StatusCode::UNAUTHORIZED),
            (&genuine, StatusCode::OK),
        ] {
            let res = app
                .client
                .get(app.url(path))
                .header("cookie", format!("{SESSION}={cookie}"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), expected, "{path}");
        }
    }
}
