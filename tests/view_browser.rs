//! The live view in a real headless Chromium driven over WebDriver (chromedriver): a watched
//! script's output, figure and table appear; a save updates the page without a reload; an
//! error shows its file:line and source line with the earlier results marked stale; fixing it
//! recovers; figures and shown values have stable anchors; the report is self-contained.
//!
//! Needs `chromium` and `chromedriver` (Debian's `chromium` and `chromium-driver`; .ci/run
//! installs them): without them this test fails, it does not skip.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use minarc::script::cli::ViewSession;
use minarc::script::watch::{WatchEvent, Watcher};
use minarc::script::{Host, Output};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A WebDriver session on a chromedriver child process (both ended on drop).
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let resp = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, Some(b)) => agent.post(url).send_json(&b),
        (_, None) => agent.post(url).send_json(json!({})),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let mut text = String::new();
    resp.into_body()
        .into_reader()
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"))
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed for this test (Debian: apt-get install chromium chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        loop {
            let ok = ureq::get(&format!("{base}/status")).call().is_ok();
            if ok {
                break;
            }
            assert!(t.elapsed() < WAIT, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium_binary(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1200,1500"]}}}});
        let r = call("POST", &format!("{base}/session"), Some(caps));
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn goto(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({"url": url})));
    }

    fn js(&self, script: &str) -> Value {
        let r = call(
            "POST",
            &self.url("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        );
        r["value"].clone()
    }

    /// Waits until the script returns true.
    fn wait_for(&self, what: &str, script: &str) {
        let t = Instant::now();
        while self.js(script) != Value::Bool(true) {
            assert!(
                t.elapsed() < WAIT,
                "timed out waiting for {what}; page:\n{}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let r = call("GET", &self.url("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromium_binary() -> String {
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("chromium is needed for this test (Debian: apt-get install chromium chromium-driver)");
}

fn script(tag: &str, out: &Path, broken: bool) -> String {
    format!(
        "print(\"hello {tag}\");\n\
         plot_logit_lens(from_array([[0.1, 0.5, 0.3], [0.2, 0.9, 0.1]]), 0, \"log-prob\", \"{}\");\n\
         show_table(\"scores\", [[\"head\", \"score\"], [\"1-2\", 0.5], [\"{tag}\", -0.25]]);\n\
         {}",
        out.join("lens.png").display(),
        if broken {
            "let x = no_such_function(3);\n"
        } else {
            ""
        }
    )
}

#[test]
fn the_live_view_follows_a_watched_script_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.rhai");
    let figs = dir.path().join("out");
    std::fs::write(&file, script("one", &figs, false)).unwrap();
    let shots: PathBuf = std::env::var_os("MINARC_VIEW_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().to_path_buf());

    // the watch with its view, on its own thread (files are recorded per thread)
    let stop = Arc::new(AtomicBool::new(false));
    let (url_tx, url_rx) = mpsc::channel();
    let (ran_tx, ran_rx) = mpsc::channel();
    let (stop2, file2) = (stop.clone(), file.clone());
    let watcher = std::thread::spawn(move || {
        let (out, buf) = Output::buffer();
        let host = Host::with_output(out);
        host.state().set_show_progress(false);
        let view = ViewSession::start(0, host.state().clone(), buf).unwrap();
        url_tx.send(view.url()).unwrap();
        let mut w = Watcher::new(host, &file2);
        let r = w.run_once().map(|_| ());
        view.publish(1, &r);
        w.event_loop(&stop2, |ev| {
            if let WatchEvent::Ran(n, r) = ev {
                view.publish(*n, r);
                let _ = ran_tx.send(*n);
            }
        })
        .unwrap();
    });
    let page = url_rx.recv_timeout(WAIT).unwrap();

    let b = Browser::start();
    b.goto(&page);
    b.wait_for(
        "the first run",
        "return document.body.innerText.includes('hello one') && \
         !!document.querySelector('img.figure') && document.querySelector('img.figure').complete && \
         document.querySelector('img.figure').naturalWidth > 100 && \
         document.body.innerText.includes('1-2')",
    );
    // stable anchors
    assert_eq!(
        b.js("return !!document.getElementById('fig-lens') && !!document.getElementById('show-scores')"),
        Value::Bool(true)
    );
    b.screenshot(&shots.join("view-ok.png"));
    let loaded = b.js("return window.__viewLoadedAt");

    // a save re-runs the script and updates the open page without a reload
    std::fs::write(&file, script("two", &figs, false)).unwrap();
    ran_rx.recv_timeout(WAIT).unwrap();
    b.wait_for(
        "the second run",
        "return document.body.innerText.includes('hello two')",
    );
    assert_eq!(
        b.js("return window.__viewLoadedAt"),
        loaded,
        "the page reloaded"
    );
    assert_eq!(
        b.js("return document.body.innerText.includes('hello one')"),
        Value::Bool(false),
        "the latest run's output replaces the earlier one"
    );

    // an error: file:line and the source line, the earlier results kept and marked stale
    std::fs::write(&file, script("three", &figs, true)).unwrap();
    ran_rx.recv_timeout(WAIT).unwrap();
    b.wait_for("the error", "return !!document.getElementById('error')");
    let err = b.js("return document.getElementById('error').innerText");
    let err = err.as_str().unwrap();
    assert!(
        err.contains("exp.rhai:4:") && err.contains("no_such_function"),
        "{err}"
    );
    assert_eq!(
        b.js("return !!document.getElementById('stale-marker') && \
              !!document.querySelector('.stale img.figure')"),
        Value::Bool(true)
    );
    b.screenshot(&shots.join("view-error.png"));
    assert_eq!(b.js("return window.__viewLoadedAt"), loaded);

    // fixed: the error goes, the new results are fresh
    std::fs::write(&file, script("four", &figs, false)).unwrap();
    ran_rx.recv_timeout(WAIT).unwrap();
    b.wait_for(
        "the recovery",
        "return document.body.innerText.includes('hello four') && !document.getElementById('error') \
         && !document.getElementById('stale-marker')",
    );
    assert_eq!(b.js("return window.__viewLoadedAt"), loaded);
    assert_eq!(
        b.js("return document.querySelectorAll('#history details').length >= 3"),
        Value::Bool(true),
        "earlier runs are listed"
    );

    // the report: one self-contained file with the figure embedded
    let report = ureq::get(&format!("{page}report"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(report.contains("data:image/png;base64,") && report.contains("hello four"));
    assert!(!report.contains("http://") && !report.contains("https://"));
    let page_html = ureq::get(&page)
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        !page_html.contains("http://") && !page_html.contains("https://"),
        "no CDN"
    );

    drop(b);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
}
