//! Starting a server on an ephemeral loopback port with the tiny fixture, and small HTTP/SSE
//! helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use phive::engine::{Engine, EngineConfig};
use phive::pipeline::{LoadOptions, Pipeline};
use phive_server::{AppState, Server, ServerConfig};
use serde_json::{json, Value};

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A fixture image path.
pub fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// A fixture image as raw base64.
pub fn image_base64(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(image_path(name)).unwrap())
}

/// A fixture image as a data URL.
pub fn image_data_url(name: &str) -> String {
    format!("data:image/png;base64,{}", image_base64(name))
}

/// Parses the phi3v golden file.
pub fn goldens() -> Value {
    let text = std::fs::read_to_string(fixtures().join("goldens/phi3v/generation.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A running server; shut down when dropped.
pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// Receives once `Server::serve` has returned (in a mutex: tests share servers).
    stopped: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The test servers' defaults: tight limits so the refusals are cheap to trigger.
pub fn test_config() -> (ServerConfig, EngineConfig) {
    let mut config = ServerConfig::new("phi3v-tiny");
    config.model_aliases.push(fixtures().join("phi3v-tiny").to_string_lossy().into_owned());
    config.max_body_bytes = 2 * 1024 * 1024;
    config.media.max_bytes = 1024 * 1024;
    config.media.max_pixels = 2_000_000;
    config.media.local_dirs = Some(vec![fixtures().join("images")]);
    config.media.fetch_timeout = Duration::from_secs(5);
    (config, EngineConfig { max_num_seqs: 8, max_queue: 64, ..Default::default() })
}

/// Starts a server with the tiny checkpoint on 127.0.0.1:0, after `configure` adjusts the defaults.
pub fn start(configure: impl FnOnce(&mut ServerConfig, &mut EngineConfig)) -> TestServer {
    start_with_shutdown_timeout(Duration::from_secs(2), configure)
}

/// [`start`] with the time in-flight requests get once shutdown begins.
pub fn start_with_shutdown_timeout(
    shutdown_timeout: Duration,
    configure: impl FnOnce(&mut ServerConfig, &mut EngineConfig),
) -> TestServer {
    let (mut config, mut engine_config) = test_config();
    configure(&mut config, &mut engine_config);
    let pipeline = Pipeline::load(&LoadOptions {
        model: fixtures().join("phi3v-tiny").to_string_lossy().into_owned(),
        revision: None,
        ..Default::default()
    })
    .unwrap();
    let engine = Arc::new(Engine::new(pipeline, engine_config).unwrap());
    let server = Server::new(engine, config);
    let state = Arc::clone(server.state());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let shutdown = async move {
                let _ = shutdown_rx.await;
            };
            server.serve(listener, shutdown, shutdown_timeout).await.unwrap();
            let _ = stopped_tx.send(());
        });
        runtime.shutdown_timeout(Duration::from_millis(200));
    });
    let addr = addr_rx.recv().unwrap();
    TestServer { base: format!("http://{addr}"), state, shutdown: Some(shutdown_tx), stopped: stopped.into() }
}

/// A blocking client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

impl TestServer {
    /// Begins the shutdown, as SIGTERM does in `phive serve`.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).unwrap();
        }
    }

    /// Whether `Server::serve` returns within `timeout`.
    pub fn stops_within(&self, timeout: Duration) -> bool {
        self.stopped.lock().unwrap().recv_timeout(timeout).is_ok()
    }

    /// GETs `path`; returns status and parsed body.
    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = client().get(self.url(path)).send().unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON; returns status and parsed body.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = client().post(self.url(path)).json(body).send().unwrap();
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body ({e}): {text}")))
    }

    /// POSTs a chat request.
    pub fn chat(&self, body: &Value) -> (u16, Value) {
        self.post("/v1/chat/completions", body)
    }

    /// Streams a request and returns every `data:` payload (JSON chunks, then `[DONE]`).
    pub fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let response = client().post(self.url(path)).json(body).send().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut text = String::new();
        BufReader::new(response).read_to_string(&mut text).unwrap();
        assert!(text.ends_with("\n\n"), "events end with a blank line: {text:?}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data line: {event:?}"))
                    .to_string()
            })
            .collect()
    }

    /// The metrics text.
    pub fn metrics(&self) -> String {
        client().get(self.url("/metrics")).send().unwrap().text().unwrap()
    }

    /// Waits until `check` holds for the engine stats, or panics after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&phive::engine::EngineStats) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let stats = self.state.engine().stats();
            if check(&stats) {
                return;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {what}: {stats:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Opens a stream of `body` (a chat request) and returns the reader after its first event.
pub fn open_stream(server: &TestServer, body: &Value) -> BufReader<reqwest::blocking::Response> {
    let response = client().post(server.url("/v1/chat/completions")).json(body).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut reader = BufReader::new(response);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: {"), "{line}");
    reader
}

/// A metric's value from the exposition text (the first line starting with `series`).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A user message with text.
pub fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// A user message with one image then text.
pub fn user_with_image(url: &str, text: &str) -> Value {
    json!([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": text}
    ]}])
}

/// Asserts OpenAI's error shape: all four keys, strings or nulls.
pub fn assert_error_shape(body: &Value, context: &str) {
    let error = body
        .get("error")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{context}: no error object in {body}"));
    assert_eq!(error.len(), 4, "{context}: exactly message/type/param/code: {body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{context}: message: {body}");
    assert!(error["type"].is_string(), "{context}: type: {body}");
    assert!(error["param"].is_string() || error["param"].is_null(), "{context}: param: {body}");
    assert!(error["code"].is_string() || error["code"].is_null(), "{context}: code: {body}");
}

/// A one-file HTTP server on 127.0.0.1 that answers every request with `body` (as image/png).
/// Returns its base URL; the thread lives as long as the test process.
pub fn serve_bytes(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    format!("http://{addr}")
}
