//! Watch mode: edit a script in a temp dir; the host (the loaded fixture model) persists across
//! runs, a syntax error is reported and survived, the next good save runs again.

use minarc::script::watch::{WatchEvent, Watcher};
use minarc::script::{ErrorKind, Host, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn watch_reruns_on_save_keeps_host_state_and_survives_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("tiny");
    minarc::model::fixture::init_model(minarc::model::fixture::Preset::Tiny, 0, &model_path, 1)
        .unwrap();
    let script = dir.path().join("exp.rhai");
    let good = |tag: &str| {
        format!(
            "let m = load_model(\"{}\");\nprint(\"{tag} \" + m.n_layers);\n",
            model_path.display()
        )
    };
    std::fs::write(&script, good("v1")).unwrap();

    let (out, buf) = Output::buffer();
    let host = Host::with_output(out);
    let mut w = Watcher::new(host, &script);
    let _ = w.run_once().unwrap();
    assert_eq!(buf.contents(), "v1 2\n");

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stop_loop = stop.clone();
    let handle = std::thread::spawn(move || {
        let r = w.event_loop(&stop_loop, |ev| {
            let msg = match ev {
                WatchEvent::Ready => None,
                WatchEvent::Ran(n, r) => Some((*n, r.clone())),
            };
            tx.send(msg).unwrap();
        });
        (w, r)
    });
    assert!(
        rx.recv_timeout(WAIT).unwrap().is_none(),
        "first event must be Ready"
    );

    // A syntax error: reported with its location, host kept.
    std::fs::write(&script, "let m = load_model(;\n").unwrap();
    let (n, r) = rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(n, 2);
    let e = r.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Parse);
    assert_eq!(e.line, Some(1));
    assert!(
        e.to_string()
            .starts_with(&format!("{}:1:", script.display()))
    );

    // The next good save runs again, reusing the loaded model.
    std::fs::write(&script, good("v3")).unwrap();
    let (n, r) = rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(n, 3);
    r.unwrap();

    stop.store(true, Ordering::SeqCst);
    let (w, r) = handle.join().unwrap();
    r.unwrap();
    assert_eq!(buf.contents(), "v1 2\nv3 2\n");
    assert_eq!(w.host().state().load_count(), 1);
    assert_eq!(w.runs(), 3);
}
