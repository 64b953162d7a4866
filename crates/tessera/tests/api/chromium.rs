//! The pages and `/docs` in a real headless Chromium (Debian's), driven by playwright-core from
//! `tests/browser/*.mjs`. Screenshots land in `target/screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::*;

/// Runs `script` from tests/browser with `args` and the screenshot directory; returns stdout.
async fn node(script: &'static str, args: Vec<String>) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
    let shots = root.join("target/screenshots");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&browser_dir)
            .arg(script)
            .args(&args)
            .arg(&shots)
            .output()
            .expect("node runs (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn the_browser_flow_works_in_headless_chromium() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    let args = vec![
        base,
        "admin".into(),
        ADMIN_PASSWORD.into(),
        "a brand new admin phrase".into(),
    ];
    let stdout = node("flow.mjs", args).await;
    assert!(stdout.contains("checks passed"), "{stdout}");
}

#[tokio::test]
async fn swagger_ui_works_offline_and_authorizes_through_token_in_chromium() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.addr);
    let stdout = node(
        "docs.mjs",
        vec![base, "admin".into(), ADMIN_PASSWORD.into()],
    )
    .await;
    assert!(stdout.contains("authorizes through /token"), "{stdout}");
}
