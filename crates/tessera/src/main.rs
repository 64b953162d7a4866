//! The `tessera` binary: parse the command line, set up logging, hand over to the library.

use clap::Parser as _;
use tessera::cli::Cli;
use tessera::config::LogFormat;

/// jemalloc rather than glibc's malloc. Measured on `/verify` (bench/callgrind and perf, two
/// workers): glibc served every block above its 1 KiB thread cache (the boxed futures of the
/// store call, the handler and the middleware, the response header map) from arenas both
/// workers lock, 1.4 futex calls per request where the baseline makes 0.2, and ~15k of the
/// ~95k instructions a verification cost were malloc's. With jemalloc: 0.04 futex calls and
/// 10k instructions fewer per request. Blocks of 8 MiB and more (argon2id's 19 MiB) go back to
/// the OS as soon as they are freed.
#[cfg(all(feature = "jemalloc", target_os = "linux"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads at its initialisation, before `main`: hence a symbol,
/// not a call. One arena (the per-thread caches take the traffic; an arena per thread only
/// added memory: 44 vs 41 MiB at 256 connections) and freed pages returned after one second
/// instead of ten (37 MiB).
#[cfg(all(feature = "jemalloc", target_os = "linux"))]
#[allow(unsafe_code)]
// SAFETY: a NUL-terminated string that jemalloc only reads; nothing else refers to the symbol.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    #[cfg(not(all(feature = "jemalloc", target_os = "linux")))]
    return_large_allocations_to_the_os();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_or(std::process::ExitCode::FAILURE, |rt| rt.block_on(run()))
}

/// Without jemalloc, on glibc: every argon2id hash allocates `argon2_memory_kib` (19 MiB by
/// default) and frees it. glibc's malloc raises its mmap threshold after the first such free,
/// so later blocks come from the thread arenas and stay in the process: measured 232 MiB RSS
/// after 20 concurrent logins. A fixed threshold keeps large blocks mmapped, returned to the OS
/// on free: 21 MiB after the same 20 logins.
#[cfg(not(all(feature = "jemalloc", target_os = "linux")))]
fn return_large_allocations_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // exists, and a failure (return value 0) leaves the default behaviour.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tessera: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(settings.log_format, cli.is_serve());
    match cli.run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, serving: bool) {
    use tessera::observability::log_layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, registry};
    // CLI commands stay quiet unless asked; the server logs at info.
    let default = if serving { "info" } else { "warn" };
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty() && EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| default.to_owned());
    // Levels by target (all `RUST_LOG` usually says) need no per-span bookkeeping. `EnvFilter`
    // does it for every span anyway, to serve span and field directives: a locked map lookup
    // at each span's creation, entry, exit and close, so on every poll of every request
    // (bench/callgrind: ~1k instructions per verification). It is kept for directives that
    // need it: span and field directives (`[span]`, `{field}`), told by their brackets, which
    // no target contains (`Targets` would read them as target names and drop them silently).
    let per_target = !directives.contains(['[', '{']);
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match directives.parse::<Targets>() {
        Ok(targets) if per_target => registry()
            .with(targets)
            .with(log_layer(format, colours, std::io::stderr))
            .init(),
        _ => {
            // `[request]` directives need requests to run inside a span of that name.
            tessera::observability::set_request_spans(true);
            registry()
                .with(EnvFilter::new(directives))
                .with(log_layer(format, colours, std::io::stderr))
                .init();
        }
    }
}
