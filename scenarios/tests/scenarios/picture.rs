//! The picture of a failing run (`kaelix sim replay --html`) opened in a
//! real browser: headless Chromium runs the page's script, takes a
//! screenshot, and dumps the DOM it built, which must hold the lanes, the
//! arrows and the highlighted failure, and no script or console error.
//!
//! Skipped, with the reason printed, when no Chromium binary is found
//! (`KAELIX_CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`) —
//! unless `CI_REQUIRE_CHROMIUM=1`, which `.ci/run` sets after
//! installing Debian's `chromium` package, so there it cannot be skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use kaelix_scenarios::find;
use kaelix_scenarios::picture::draw;
use kaelix_sim::picture::DEFAULT_MAX_MESSAGES;

#[allow(clippy::disallowed_methods, reason = "the test locates a browser from its environment")]
fn chromium() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("KAELIX_CHROMIUM") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!("no chromium or chromium-browser on PATH ({path}) and KAELIX_CHROMIUM is unset"))
}

#[allow(clippy::disallowed_methods, reason = "the test reads whether a browser is required")]
fn chromium_required() -> bool {
    std::env::var("CI_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1")
}

#[allow(clippy::disallowed_methods, reason = "the test hands the browser a real file")]
fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("temp dir is writable");
}

#[allow(clippy::disallowed_methods, reason = "the test reads the browser's screenshot")]
fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

fn headless(browser: &Path, extra: &[&str], page: &Path) -> std::process::Output {
    Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,900"])
        // Let the page's script run before the dump or the screenshot.
        .arg("--virtual-time-budget=10000")
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs")
}

/// The DOM without its `<script>` elements (whose source holds the markup
/// templates the checks look for).
fn without_scripts(dom: &str) -> String {
    let mut out = String::with_capacity(dom.len());
    let mut rest = dom;
    while let Some(start) = rest.find("<script") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("</script>").expect("closed script") + start + "</script>".len();
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn attribute<'a>(dom: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let start = dom.find(&key).unwrap_or_else(|| panic!("no {name} attribute in the DOM")) + key.len();
    &dom[start..start + dom[start..].find('"').expect("closed attribute")]
}

#[test]
fn a_planted_failure_drawn_and_checked_in_headless_chromium() {
    let scenario = find("raft-partitions-ack-before-commit").expect("planted variant registered");
    let seed = 0;
    let drawn = draw(scenario, seed, None, DEFAULT_MAX_MESSAGES);
    assert!(!drawn.report.verdict.passed(), "seed {seed} of the planted bug must fail");
    // Drawing is a sink: the drawn run is the run.
    assert_eq!(drawn.report.trace_hash, scenario.run(seed, None).trace_hash);
    // Self-contained: no resource is fetched (the one URL is SVG's namespace).
    let without_namespace = drawn.html.replace("http://www.w3.org/2000/svg", "");
    for remote in ["http://", "https://", "<link", " src=", "@import"] {
        assert!(!without_namespace.contains(remote), "the page refers to {remote:?}");
    }
    assert!(drawn.messages.1 > 0 && drawn.messages.1 <= drawn.messages.0);

    let browser = match chromium() {
        Ok(b) => b,
        Err(why) if !chromium_required() => {
            eprintln!("SKIPPED: {why}; install Debian's chromium package (CI_REQUIRE_CHROMIUM=1 makes this an error)");
            return;
        }
        Err(why) => panic!("CI_REQUIRE_CHROMIUM=1 but {why}"),
    };
    let dir = std::env::temp_dir();
    let page = dir.join(format!("kaelix-picture-{}.html", std::process::id()));
    let shot = dir.join(format!("kaelix-picture-{}.png", std::process::id()));
    write(&page, &drawn.html);

    let dumped = headless(&browser, &["--dump-dom"], &page);
    let dom = without_scripts(&String::from_utf8_lossy(&dumped.stdout));
    assert!(dumped.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dumped.stderr));
    assert_eq!(attribute(&dom, "data-errors"), "", "the page logged errors");
    assert_eq!(attribute(&dom, "data-rendered"), "1", "the page's script did not draw");
    // One lane per node and client of the run, plus the clients' operations.
    let lanes: usize = attribute(&dom, "data-lanes").parse().expect("a count");
    assert!(lanes >= 3 + 3, "{lanes} lanes");
    assert_eq!(dom.matches("<g class=\"lane").count(), lanes);
    for server in ["server-1", "server-2", "server-3"] {
        assert!(dom.contains(&format!(">{server}</text>")), "no lane for {server}");
    }
    let arrows: usize = attribute(&dom, "data-arrows").parse().expect("a count");
    assert!(arrows > 0, "no arrow drawn");
    assert_eq!(dom.matches("<line class=\"msg ").count(), arrows);
    assert!(dom.contains("marker-end=\"url(#head-"), "arrows have heads");
    // The faults of the run are marked on the lanes.
    assert!(dom.contains("<g class=\"mark "), "no fault marked");
    // The failed check, highlighted at its moment, and the operations it names.
    assert_eq!(attribute(&dom, "data-failure-drawn"), "true");
    assert!(dom.contains("<g id=\"failure\" class=\"failure\">"), "no highlighted failure");
    assert!(dom.contains("✗ SAFETY VIOLATION"), "the failure names its check");
    assert!(dom.contains("class=\"span cited\"") || dom.contains("class=\"span unknown cited\""), "no cited operation");

    let shot_arg = format!("--screenshot={}", shot.display());
    let screenshot = headless(&browser, &[&shot_arg], &page);
    assert!(screenshot.status.success(), "chromium failed: {}", String::from_utf8_lossy(&screenshot.stderr));
    let png = read(&shot);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "no screenshot written to {}", shot.display());
    assert!(png.len() > 20_000, "a {}-byte screenshot is blank", png.len());
    eprintln!("picture: {} ; screenshot: {}", page.display(), shot.display());
}
