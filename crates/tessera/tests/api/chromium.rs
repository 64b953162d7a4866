//! The pages in a real headless Chromium (Debian's), driven by playwright-core from
//! `tests/browser/flow.mjs`. Screenshots land in `target/screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn the_browser_flow_works_in_headless_chromium() {
    let app = spawn_app().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
    let shots = root.join("target/screenshots");
    let base = format!("http://{}", app.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&browser_dir)
            .arg("flow.mjs")
            .args([
                base.as_str(),
                "admin",
                ADMIN_PASSWORD,
                "a brand new admin phrase",
            ])
            .arg(&shots)
            .output()
            .expect("node runs (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser flow failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    println!("{stdout}");
}
