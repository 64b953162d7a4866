//! Real backing servers for the tests: private `redis-server` processes (standalone, a 3-master
//! cluster, a master + replica + sentinel) and a private PostgreSQL, each on free ports with a
//! temporary directory. One of each is started lazily per test binary and shared; tests isolate
//! themselves by key prefix (Redis) or by database (PostgreSQL). A watchdog process kills each
//! server when the test binary exits, however it exits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port that was free a moment ago (and whose +10000 cluster-bus twin is free too).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Runs `kill` (a shell command) once this test process is gone.
// The watchdog must outlive us, so nobody waits for it; it exits on its own.
#[allow(clippy::zombie_processes)]
fn watchdog(kill: &str) {
    let me = std::process::id();
    let script = format!("while kill -0 {me} 2>/dev/null; do sleep 0.5; done; {kill}");
    Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog starts");
}

fn wait_until(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not become ready in 20 s; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `calls` of one command in Redis's `INFO commandstats` (commands run by scripts included):
/// server-wide, so only meaningful on a test's private server.
pub fn redis_calls(port: u16, command: &str) -> u64 {
    let stats = redis_cli(port, &["info", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// One `redis-server` process.
pub struct RedisProcess {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

impl RedisProcess {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(free_port(), None, extra)
    }

    /// Starts again on `port`, loading the data saved in `data_dir`.
    pub fn start_on(port: u16, data_dir: &Path) -> Self {
        Self::start_with(port, Some(data_dir), &[])
    }

    fn start_with(port: u16, data_dir: Option<&Path>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--enable-debug-command", "local", "--dir"])
            .arg(data_dir.unwrap_or(dir.path()))
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (the test script installs it)");
        watchdog(&format!("kill -9 {}", child.id()));
        wait_until("redis-server", &log, || {
            redis_cli(port, &["ping"]).is_some_and(|r| r.contains("PONG"))
        });
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Where this server keeps its dump.
    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    /// The last `lines` lines of this server's log, for a failing test's message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("redis.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-master Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<RedisProcess>,
}

impl RedisCluster {
    /// Three masters.
    pub fn start() -> Self {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each.
    pub fn start_with_replicas(replicas: usize) -> Self {
        let nodes: Vec<RedisProcess> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisProcess::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--repl-diskless-sync-delay",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            let log = PathBuf::from("/dev/null");
            wait_until("redis cluster", &log, || {
                redis_cli(n.port, &["cluster", "info"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
        }
        Self { nodes }
    }

    /// The ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|n| n.port)
            .filter(|port| redis_cli(*port, &["role"]).is_some_and(|r| r.starts_with("master")))
            .collect()
    }

    /// `redis_url` for the cluster.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// A master, a replica and one sentinel watching them.
pub struct RedisSentinel {
    pub master: RedisProcess,
    pub replica: RedisProcess,
    pub sentinel: RedisProcess,
}

impl RedisSentinel {
    pub fn start() -> Self {
        // Redis 7 sends a new replica its first copy without a disk file, after waiting 5 s
        // for more replicas to share it: 5 s of every failover test spent waiting.
        let master = RedisProcess::start(&["--repl-diskless-sync-delay", "0"]);
        let replica = RedisProcess::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                master.port
            ),
        )
        .expect("sentinel.conf");
        let log = dir.path().join("sentinel.log");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis sentinel runs");
        watchdog(&format!("kill -9 {}", child.id()));
        wait_until("redis sentinel", &log, || {
            redis_cli(port, &["sentinel", "get-master-addr-by-name", "mymaster"])
                .is_some_and(|r| !r.trim().is_empty())
        });
        let sentinel = RedisProcess {
            port,
            child,
            _dir: dir,
        };
        Self {
            master,
            replica,
            sentinel,
        }
    }

    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.sentinel.port)
    }

    /// Waits until the replica has everything the master has: its replication offset has
    /// reached the master's. (`WAIT` from a client of its own proves nothing: it waits only for
    /// that client's writes, and a fresh client has none, so it returns as soon as any replica
    /// is connected, before tessera's writes have arrived.)
    pub fn wait_for_replication(&self) {
        let offset = |port: u16, field: &str| {
            redis_cli(port, &["info", "replication"]).and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix(field)?.trim().parse::<u64>().ok())
            })
        };
        let target = offset(self.master.port, "master_repl_offset:").expect("master offset");
        wait_until("replication", Path::new("/dev/null"), || {
            offset(self.replica.port, "slave_repl_offset:").is_some_and(|o| o >= target)
        });
    }

    /// Waits until the sentinel has promoted the replica.
    pub fn wait_for_promotion(&self) {
        let replica = self.replica.port.to_string();
        wait_until("sentinel failover", Path::new("/dev/null"), || {
            redis_cli(
                self.sentinel.port,
                &["sentinel", "get-master-addr-by-name", "mymaster"],
            )
            .is_some_and(|r| r.lines().nth(1) == Some(replica.as_str()))
        });
        wait_until("promoted replica", Path::new("/dev/null"), || {
            redis_cli(self.replica.port, &["role"]).is_some_and(|r| r.starts_with("master"))
        });
    }
}

/// A private PostgreSQL server.
pub struct Postgres {
    pub port: u16,
    dir: TempDir,
    next_db: AtomicU32,
}

impl Postgres {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(args)
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown), as an outage would.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg-restart.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap_or("/dev/null"),
        ]);
        watchdog(&format!(
            "kill -9 $(head -1 {}/postmaster.pid) 2>/dev/null",
            self.data().display()
        ));
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (the test script installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().expect("PostgreSQL binaries")
}

fn as_postgres(bin: &Path) -> Command {
    // initdb refuses to run as root.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = Command::new("chmod").arg("777").arg(dir.path()).status();
        let data = dir.path().join("data");
        let out = as_postgres(&pg_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        // Written through the inherited descriptor: the server needs no permission on it.
        let log = dir.path().join("pg.log");
        let mut cmd = as_postgres(&pg_bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path());
        cmd.args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=300",
        ]);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("postgres runs");
        watchdog(&format!(
            "kill -9 {} 2>/dev/null; kill -9 $(head -1 {}/postmaster.pid) 2>/dev/null",
            child.id(),
            data.display()
        ));
        std::mem::forget(child);
        wait_until("postgres", &log, || {
            Command::new(pg_bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        Self {
            port,
            dir,
            next_db: AtomicU32::new(0),
        }
    }

    /// A fresh, empty database's URL.
    pub async fn fresh_database(&self) -> String {
        use sqlx::Connection as _;
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("postgres admin connection");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let _ = &self.dir;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

static REDIS: OnceLock<RedisProcess> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
static POSTGRES: OnceLock<Postgres> = OnceLock::new();
static PREFIX: AtomicU32 = AtomicU32::new(0);

/// The shared standalone Redis of this test binary.
pub fn redis() -> &'static RedisProcess {
    REDIS.get_or_init(|| RedisProcess::start(&[]))
}

/// The shared Redis Cluster of this test binary.
pub fn cluster() -> &'static RedisCluster {
    CLUSTER.get_or_init(RedisCluster::start)
}

/// The shared PostgreSQL of this test binary.
pub fn postgres() -> &'static Postgres {
    POSTGRES.get_or_init(Postgres::start)
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        PREFIX.fetch_add(1, Ordering::SeqCst)
    )
}
