//! Bad requests get a 4xx JSON error naming the problem and the server keeps serving; bearer
//! token auth; body limit; loopback-only binds without a token.

mod remote_support;

use minarc::backend::{Backend, SampleKey};
use minarc::model::CaptureSpec;
use minarc::remote::server::bind_address;
use minarc::remote::wire::{ErrorBody, encode_request, encode_tensors};
use minarc::remote::{Remote, ServeOptions};
use remote_support::*;

const JSON: &str = "application/json";

/// (case, method, path, content type, body, expected status, words the error must contain).
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Vec<u8>,
    u16,
    Vec<&'a str>,
);

fn error_of(code: u16, body: &[u8], case: &str) -> String {
    assert!((400..500).contains(&code), "{case}: HTTP {code}");
    let e: ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("{case}: body is not a JSON error: {body:?}"));
    e.error
}

#[test]
fn malformed_requests_get_4xx_json_errors_and_the_server_keeps_serving() {
    let srv = server(opts());
    let url = srv.url();
    let remote = Remote::connect(&url, None).unwrap();
    forward_all(&remote, "d", &[0, 1]);
    let s0 = remote.seq_len(&SampleKey::new("d", 0)).unwrap();
    let too_far = format!(r#"{{"dataset":"d","sample":0,"layer":0,"pos_ids":[0,{s0}]}}"#);
    let t = candle_core::Tensor::ones((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let octet = encode_tensors(&[("x", &t)], None).unwrap();
    let octet_req = encode_request(&serde_json::json!({"dataset": "d"}), &[("x", &t)]).unwrap();
    let cases: Vec<Case> = vec![
        ("bad JSON", "POST", "/hidden_states", JSON, b"{not json".to_vec(), 400, vec!["JSON"]),
        ("JSON of the wrong type", "POST", "/hidden_states", JSON, b"[1,2]".to_vec(), 400, vec!["JSON"]),
        ("missing field", "POST", "/hidden_states", JSON,
            br#"{"sample":0,"layer":0}"#.to_vec(), 400, vec!["dataset"]),
        ("missing sample (null is the mean, absent is an error)", "POST", "/hidden_states", JSON,
            br#"{"dataset":"d","layer":0}"#.to_vec(), 400, vec!["sample"]),
        ("unknown field", "POST", "/hidden_states", JSON,
            br#"{"dataset":"d","sample":0,"layer":0,"head":1}"#.to_vec(), 400, vec!["head"]),
        ("negative layer", "POST", "/hidden_states", JSON,
            br#"{"dataset":"d","sample":0,"layer":-1}"#.to_vec(), 400, vec!["JSON"]),
        ("unknown dataset", "POST", "/hidden_states", JSON,
            br#"{"dataset":"nope","sample":0,"layer":0}"#.to_vec(), 404, vec!["nope"]),
        ("unknown sample", "POST", "/mlp_output", JSON,
            br#"{"dataset":"d","sample":7,"layer":0}"#.to_vec(), 404, vec!["sample 7"]),
        ("layer out of range", "POST", "/attn_output", JSON,
            br#"{"dataset":"d","sample":0,"layer":2}"#.to_vec(), 400, vec!["layer 2"]),
        ("hidden_states layer past L", "POST", "/hidden_states", JSON,
            br#"{"dataset":"d","sample":0,"layer":3}"#.to_vec(), 400, vec!["layer 3"]),
        ("missing layer", "POST", "/head_output", JSON,
            br#"{"dataset":"d","sample":0,"heads":1}"#.to_vec(), 400, vec!["layer"]),
        ("head out of range", "POST", "/attn_weights", JSON,
            br#"{"dataset":"d","sample":0,"layer":0,"heads":4}"#.to_vec(), 400, vec!["head 4"]),
        ("head in list out of range", "POST", "/head_output", JSON,
            br#"{"dataset":"d","sample":0,"layer":0,"heads":[0,9]}"#.to_vec(), 400, vec!["head 9"]),
        ("MLP pseudo-head inside a list", "POST", "/head_output", JSON,
            br#"{"dataset":"d","sample":0,"layer":0,"heads":[0,4]}"#.to_vec(), 400, vec!["MLP"]),
        ("empty head list", "POST", "/head_output", JSON,
            br#"{"dataset":"d","sample":0,"layer":0,"heads":[]}"#.to_vec(), 400, vec!["heads"]),
        ("position out of range", "POST", "/hidden_states", JSON,
            too_far.into_bytes(), 400, vec!["position"]),
        ("empty positions", "POST", "/logits", JSON,
            br#"{"dataset":"d","sample":0,"pos_ids":[]}"#.to_vec(), 400, vec!["pos_ids"]),
        ("bad wire dtype", "POST", "/logits", JSON,
            br#"{"dataset":"d","sample":0,"dtype":"int4"}"#.to_vec(), 400, vec!["dtype"]),
        ("safetensors where JSON is expected", "POST", "/hidden_states", "application/octet-stream",
            octet.clone(), 400, vec!["JSON"]),
        ("JSON request hidden in safetensors metadata to a JSON endpoint", "POST", "/forward",
            "application/octet-stream", octet_req, 400, vec!["JSON"]),
        ("forward: bad capture dtype", "POST", "/forward", JSON,
            br#"{"dataset":"d","sample":{"index":5,"prompt":"hi","labels":[],"candidate_ids":[],"answer_indices":[]},"capture":{"dtype":"q4"}}"#.to_vec(),
            400, vec!["dtype"]),
        ("forward: capture layer out of range", "POST", "/forward", JSON,
            br#"{"dataset":"d","sample":{"index":5,"prompt":"hi","labels":[],"candidate_ids":[],"answer_indices":[]},"capture":{"layers":[9]}}"#.to_vec(),
            422, vec!["layer 9"]),
        ("forward: answer index past the prompt", "POST", "/forward", JSON,
            br#"{"dataset":"d","sample":{"index":5,"prompt":"hi","labels":[3],"candidate_ids":[],"answer_indices":[999]},"capture":{}}"#.to_vec(),
            422, vec!["999"]),
        ("forward: empty prompt", "POST", "/forward", JSON,
            br#"{"dataset":"d","sample":{"index":5,"prompt":"","labels":[],"candidate_ids":[],"answer_indices":[]}}"#.to_vec(),
            422, vec!["empty"]),
        ("forward: empty dataset name", "POST", "/forward", JSON,
            br#"{"dataset":"","sample":{"index":5,"prompt":"hi","labels":[],"candidate_ids":[],"answer_indices":[]}}"#.to_vec(),
            400, vec!["dataset"]),
        ("batch: duplicate sample index", "POST", "/batch_forward", JSON,
            br#"{"dataset":"d","samples":[{"index":5,"prompt":"hi","labels":[],"candidate_ids":[],"answer_indices":[]},{"index":5,"prompt":"ho","labels":[],"candidate_ids":[],"answer_indices":[]}]}"#.to_vec(),
            400, vec!["twice"]),
        ("batch: captures not one per sample", "POST", "/batch_forward", JSON,
            br#"{"dataset":"d","samples":[{"index":5,"prompt":"hi","labels":[],"candidate_ids":[],"answer_indices":[]}],"captures":[{},{}]}"#.to_vec(),
            400, vec!["2 captures for 1 samples"]),
        ("batch: batch size 0", "POST", "/batch_forward", JSON,
            br#"{"dataset":"d","samples":[{"index":5,"prompt":"hi","labels":[],"candidate_ids":[],"answer_indices":[]}],"batch":0}"#.to_vec(),
            400, vec!["batch must be at least 1"]),
        ("batch: batch size over the limit", "POST", "/batch_forward", JSON,
            br#"{"dataset":"d","samples":[{"index":5,"prompt":"hi","labels":[],"candidate_ids":[],"answer_indices":[]}],"batch":1000000}"#.to_vec(),
            400, vec!["batch"]),
        ("load_model: not a model folder", "POST", "/load_model", JSON,
            br#"{"model_path":"/nonexistent/model"}"#.to_vec(), 400, vec!["config.json"]),
        ("sample info: index not a number", "GET", "/datasets/d/samples/x", JSON, vec![], 400, vec!["\"x\""]),
        ("sample info: unknown sample", "GET", "/datasets/d/samples/9", JSON, vec![], 404, vec!["sample 9"]),
        ("list samples: unknown dataset", "GET", "/datasets/zz/samples", JSON, vec![], 404, vec!["zz"]),
        ("delete unknown dataset", "DELETE", "/datasets/zz", JSON, vec![], 404, vec!["zz"]),
        ("unknown endpoint", "POST", "/no_such_thing", JSON, b"{}".to_vec(), 404, vec!["/no_such_thing"]),
        ("wrong method", "GET", "/forward", JSON, vec![], 405, vec!["GET"]),
    ];
    for (case, method, path, ctype, body, want, words) in &cases {
        let (code, bytes) = raw(method, &format!("{url}{path}"), None, ctype, body);
        let msg = error_of(code, &bytes, case);
        assert_eq!(code, *want, "{case}: {msg}");
        for w in words {
            assert!(msg.contains(w), "{case}: error {msg:?} does not name {w:?}");
        }
        eprintln!("{case}: {code} {msg}");
        // Still serving, and the cached data is intact.
        let (code, _) = raw("GET", &format!("{url}/status"), None, JSON, &[]);
        assert_eq!(code, 200, "after {case}");
    }
    assert_eq!(
        remote.datasets().unwrap(),
        vec![("d".to_string(), vec![0, 1])]
    );
    let h = remote
        .hidden_states(&SampleKey::new("d", 1), 1, None)
        .unwrap();
    let want = local();
    forward_all(&want, "d", &[1]);
    let w = want
        .hidden_states(&SampleKey::new("d", 1), 1, None)
        .unwrap();
    assert!(max_abs_diff(&h, &w) <= 1e-6);
    // The client's errors name the server and carry its message.
    let err = remote
        .hidden_states(&SampleKey::new("d", 9), 0, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("server at {url} says: ")) && err.contains("sample 9"),
        "{err}"
    );
}

#[test]
fn request_bodies_over_the_limit_are_refused() {
    let srv = server(ServeOptions {
        body_limit: 2048,
        ..opts()
    });
    let url = srv.url();
    let prompt = "x".repeat(4096);
    let body = serde_json::json!({"dataset": "d", "sample": {"index": 0, "prompt": prompt,
        "labels": [], "candidate_ids": [], "answer_indices": []}});
    let (code, bytes) = raw(
        "POST",
        &format!("{url}/forward"),
        None,
        JSON,
        body.to_string().as_bytes(),
    );
    let msg = error_of(code, &bytes, "oversized body");
    assert_eq!(code, 413, "{msg}");
    let (code, _) = raw("GET", &format!("{url}/status"), None, JSON, &[]);
    assert_eq!(code, 200);
}

/// A plain forward needs only the index and the prompt: labels, candidates and answer
/// positions default to none.
#[test]
fn forward_accepts_a_sample_with_only_index_and_prompt() {
    let srv = server(opts());
    let url = srv.url();
    let body =
        serde_json::json!({"dataset": "plain", "sample": {"index": 3, "prompt": "grid = {"}});
    let (code, bytes) = raw(
        "POST",
        &format!("{url}/forward"),
        None,
        JSON,
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["index"], 3);
    assert!(v["seq_len"].as_u64().unwrap() > 0);
}

#[test]
fn bearer_token_is_checked_on_every_request() {
    let srv = server(ServeOptions {
        token: Some("s3cret".into()),
        ..opts()
    });
    let url = srv.url();
    for (token, want) in [(None, "missing"), (Some("guess"), "wrong")] {
        for (method, path) in [
            ("GET", "/status"),
            ("GET", "/tokenizer"),
            ("POST", "/logits"),
        ] {
            let (code, bytes) = raw(method, &format!("{url}{path}"), token, JSON, b"{}");
            assert_eq!(code, 401, "{method} {path} with {token:?}");
            let msg = error_of(code, &bytes, path);
            assert!(msg.contains(want), "{msg}");
        }
    }
    let err = Remote::connect(&url, Some("guess"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("says: wrong bearer token") && err.contains("401"),
        "{err}"
    );
    let err = Remote::connect(&url, None).err().unwrap().to_string();
    assert!(err.contains("missing bearer token"), "{err}");
    let remote = Remote::connect(&url, Some("s3cret")).unwrap();
    remote
        .forward_sample("t", &input(0, PROMPTS[0]), &CaptureSpec::full(), false)
        .unwrap();
    assert_eq!(remote.datasets().unwrap(), vec![("t".to_string(), vec![0])]);
}

#[test]
fn non_loopback_bind_needs_a_token() {
    let open = ServeOptions {
        host: "0.0.0.0".into(),
        ..opts()
    };
    let err = bind_address(&open).unwrap_err().to_string();
    assert!(err.contains("--token") && err.contains("0.0.0.0"), "{err}");
    let empty_token = ServeOptions {
        token: Some(String::new()),
        ..open.clone()
    };
    assert!(bind_address(&empty_token).is_err());
    let with_token = ServeOptions {
        token: Some("t".into()),
        ..open
    };
    assert!(bind_address(&with_token).is_ok());
    for host in ["127.0.0.1", "::1", "localhost"] {
        let o = ServeOptions {
            host: host.into(),
            ..opts()
        };
        assert!(bind_address(&o).unwrap().ip().is_loopback(), "{host}");
    }
    let bad = ServeOptions {
        host: "my-laptop".into(),
        ..opts()
    };
    assert!(
        bind_address(&bad)
            .unwrap_err()
            .to_string()
            .contains("my-laptop")
    );
}

#[test]
fn connect_to_nothing_is_a_readable_error() {
    // Bind then drop a listener to get a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Remote::connect(&format!("http://127.0.0.1:{port}"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot reach server at http://127.0.0.1"),
        "{err}"
    );
    let err = Remote::connect("https://127.0.0.1:1", None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("http://"), "{err}");
}
