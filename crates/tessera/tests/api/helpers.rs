//! `spawn_app()` and friends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tessera::Application;
use tessera::config::{Settings, SettingsArgs};
use tessera::domain::clock::ManualClock;
use tessera::service::Auth;
use tokio::sync::oneshot;

/// The first admin's password in every test app.
pub const ADMIN_PASSWORD: &str = "admin test password 1";
/// The `public_url` of every test app.
pub const PUBLIC_URL: &str = "http://tessera.test";
/// A password that passes the policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running server on a private data directory.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub dir: Arc<TempDir>,
    pub auth: Arc<Auth>,
    pub clock: Arc<ManualClock>,
    /// The backend settings, to start another instance or a restart on the same stores.
    pub backend: Vec<(String, String)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Tokens of one login.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// Which stores the end-to-end suite runs on: `TESSERA_TEST_BACKEND=redis-postgres` runs it
/// again on Redis (sessions, limits, cache, keys) and PostgreSQL (users).
pub fn embedded() -> bool {
    std::env::var("TESSERA_TEST_BACKEND").map_or(true, |b| b != "redis-postgres")
}

/// Settings of the backend a new test app uses: nothing for the embedded store; a fresh Redis
/// key prefix and a fresh PostgreSQL database otherwise.
pub async fn backend_env() -> Vec<(String, String)> {
    if embedded() {
        Vec::new()
    } else {
        redis_postgres_env().await
    }
}

/// Redis + PostgreSQL settings with a private key prefix and database.
pub async fn redis_postgres_env() -> Vec<(String, String)> {
    redis_postgres_env_on(crate::servers::redis().url()).await
}

/// The same on the Redis at `redis_url` (a private server, a proxy, a cluster, a sentinel).
pub async fn redis_postgres_env_on(redis_url: String) -> Vec<(String, String)> {
    vec![
        ("TESSERA_REDIS_URL".into(), redis_url),
        (
            "TESSERA_REDIS_KEY_PREFIX".into(),
            crate::servers::unique_prefix(),
        ),
        (
            "TESSERA_DATABASE_URL".into(),
            crate::servers::postgres().fresh_database().await,
        ),
    ]
}

/// Settings for a test: port 0, the given data dir, known admin password, the backend, plus
/// `env` overrides as the environment would give them.
pub fn settings(
    dir: &std::path::Path,
    backend: &[(String, String)],
    env: &[(&str, &str)],
) -> Settings {
    let args = SettingsArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.display().to_string()),
        ..Default::default()
    };
    // A fixed public URL: instances and restarts on port 0 must agree on the issuer.
    let mut vars: Vec<(String, String)> = vec![
        ("TESSERA_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ("TESSERA_PUBLIC_URL".into(), PUBLIC_URL.into()),
    ];
    vars.extend(backend.iter().cloned());
    vars.extend(env.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    Settings::load(&args, vars).expect("test settings are valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns a server with extra `TESSERA_*` settings.
pub async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    spawn_in(dir, backend_env().await, env).await
}

/// Spawns a server on an existing data directory and backend (restarts, several instances).
pub async fn spawn_in(
    dir: Arc<TempDir>,
    backend: Vec<(String, String)>,
    env: &[(&str, &str)],
) -> TestApp {
    let clock = ManualClock::starting_now();
    let app = Application::build_with_clock(settings(dir.path(), &backend, env), clock.clone())
        .await
        .expect("app builds");
    let addr = app.local_addr();
    let auth = app.auth();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: client_from("127.0.0.1"),
        dir,
        auth,
        clock,
        backend,
        stop: Some(tx),
        task: Some(task),
    }
}

/// An HTTP client whose connections come from `ip` (any 127.x.y.z is a distinct peer).
pub fn client_from(ip: &str) -> Client {
    Client::builder()
        .local_address(ip.parse::<IpAddr>().ok())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server and waits until it has released the data directory; returns what a
    /// restart needs.
    pub async fn stop(mut self) -> (Arc<TempDir>, Vec<(String, String)>) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        (Arc::clone(&self.dir), self.backend.clone())
    }

    /// Creates a user directly through the service.
    pub async fn add_user(&self, name: &str, roles: &[&str]) {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        self.auth
            .create_user(name, PASSWORD.into(), &roles)
            .await
            .expect("user created");
    }

    /// The status of an anonymous `GET path`.
    pub async fn get_status(&self, path: &str) -> StatusCode {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .status()
    }

    /// The body of an unauthenticated `GET` (metrics, documents).
    pub async fn get_text(&self, path: &str) -> String {
        let res = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        res.text().await.expect("body")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn login_raw(&self, user: &str, password: &str) -> Response {
        self.post_json("/login", &json!({ "username": user, "password": password }))
            .await
    }

    /// Logs in and returns the tokens, asserting success.
    pub async fn login(&self, user: &str, password: &str) -> Tokens {
        let res = self.login_raw(user, password).await;
        assert_eq!(res.status(), StatusCode::OK, "login of {user} failed");
        let body: Value = res.json().await.expect("json");
        Tokens {
            access: body["access_token"]
                .as_str()
                .expect("access token")
                .to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .expect("refresh token")
                .to_owned(),
        }
    }

    /// Creates a user and logs them in.
    pub async fn user_session(&self, name: &str) -> Tokens {
        self.add_user(name, &[]).await;
        self.login(name, PASSWORD).await
    }

    pub async fn get_auth(&self, path: &str, access: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(access)
            .send()
            .await
            .expect("request")
    }

    pub async fn refresh(&self, refresh: &str) -> Response {
        self.client
            .post(self.url("/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
            .send()
            .await
            .expect("request")
    }

    /// `POST /logout` (this session) with this token.
    pub async fn logout(&self, access: &str) -> Response {
        self.client
            .post(self.url("/logout"))
            .bearer_auth(access)
            .send()
            .await
            .expect("request")
    }

    /// The status of `GET /verify` with this token.
    pub async fn verify_status(&self, access: &str) -> StatusCode {
        self.get_auth("/verify", access).await.status()
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads a JSON error body and checks its shape (API.md §4).
pub async fn error_code(res: Response) -> String {
    let body: Value = res.json().await.expect("error bodies are JSON");
    assert!(body["detail"].is_string(), "error without detail: {body}");
    body["error"].as_str().expect("error code").to_owned()
}

/// A browser without JavaScript: keeps cookies by hand (so tests can see and tamper with them),
/// never follows redirects.
pub struct Browser {
    pub client: Client,
    base: String,
    pub cookies: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    user_agent: String,
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        Self::at(&format!("http://{}", app.addr))
    }

    pub fn at(base: &str) -> Self {
        Self {
            client: client_from("127.0.0.1"),
            base: base.to_owned(),
            cookies: Default::default(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".into(),
        }
    }

    /// The same browser, presenting `ua` as its `User-Agent`.
    pub fn with_user_agent(mut self, ua: &str) -> Self {
        self.user_agent = ua.to_owned();
        self
    }

    fn cookie_header(&self) -> String {
        let jar = self.cookies.lock().unwrap();
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&self, res: &Response) {
        let mut jar = self.cookies.lock().unwrap();
        for v in res.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attrs.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(name).cloned()
    }

    pub async fn get(&self, path: &str) -> Response {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("user-agent", &self.user_agent)
            .send()
            .await
            .unwrap();
        self.keep(&res);
        res
    }

    /// Submits a form as a same-origin page would.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Response {
        self.post_form_with(path, form, &[("sec-fetch-site", "same-origin")])
            .await
    }

    pub async fn post_form_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("user-agent", &self.user_agent)
            .form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        self.keep(&res);
        res
    }

    /// Loads the login page and signs in with the form; returns the response.
    pub async fn sign_in(&self, user: &str, password: &str) -> Response {
        let page = self.get("/login").await.text().await.unwrap();
        let token = hidden(&page, "csrf_token").expect("login form has a csrf_token");
        self.post_form(
            "/login",
            &[
                ("username", user),
                ("password", password),
                ("csrf_token", &token),
            ],
        )
        .await
    }

    /// The dashboard's CSRF token.
    pub async fn csrf(&self) -> String {
        let page = self.get("/dashboard").await.text().await.unwrap();
        meta_csrf(&page).expect("a signed-in page carries the csrf-token meta tag")
    }
}

/// The value of a hidden input in a page.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// `<meta name="csrf-token" content="…">`.
pub fn meta_csrf(html: &str) -> Option<String> {
    const TAG: &str = "<meta name=\"csrf-token\" content=\"";
    let at = html.find(TAG)?;
    let rest = &html[at + TAG.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// Sends `GET /healthz` on a raw connection and asserts the 200 that comes back (a connection
/// the test controls, kept open or stalled on purpose).
pub async fn healthz_on(conn: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = conn.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );
}
