//! A `cleaner serve` server in process on a free loopback port, with the
//! test model, for tests that drive it over HTTP (as tests/serve.rs does).
//! Included by the tests that use it (`#[path = "common/server.rs"] mod
//! server;`), not by every test through `common`.

// Each test that includes this uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use cleaner::serve::{ServeConfig, Server};
use serde_json::Value as Json;

/// A running server and the runtime its tasks (and the test's clients) use.
pub struct InProcessServer {
    pub addr: SocketAddr,
    pub rt: tokio::runtime::Runtime,
    /// Taken by a test that stops the server itself.
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's run, awaited on drop unless a test took it.
    pub done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcessServer {
    /// SmolLM2 served as `model_id` with `slots` sequences of `ctx` positions.
    pub fn start(model_id: &str, slots: u32, ctx: u32) -> InProcessServer {
        let server = Server::new(
            crate::common::model(),
            ServeConfig {
                model_id: model_id.into(),
                slots,
                ctx_per_slot: ctx,
                threads: 2,
                api_key: None,
                max_body_bytes: 64 << 10,
                shutdown_grace: Duration::from_secs(2),
                adapters: Vec::new(),
            },
        )
        .expect("server");
        Self::serve(server)
    }

    /// Runs `server`, set up by the caller (another model, a sandbox).
    pub fn serve(server: Server) -> InProcessServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        InProcessServer {
            addr,
            rt,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` as JSON; the status and the parsed answer.
    pub fn post(&self, path: &str, body: &Json) -> (u16, Json) {
        let url = self.url(path);
        let (status, text) = self.rt.block_on(async {
            let resp = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("body"))
        });
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, json)
    }

    /// GETs `path`; the parsed answer (status 200 asserted).
    pub fn get(&self, path: &str) -> Json {
        let url = self.url(path);
        let (status, text) = self.rt.block_on(async {
            let resp = reqwest::get(url).await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("body"))
        });
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

impl Drop for InProcessServer {
    /// Stops the server gracefully and waits for it.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = self.rt.block_on(done);
        }
    }
}
