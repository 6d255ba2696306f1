//! `GET /metrics`: Prometheus text exposition of the server's counters.
//!
//! Requests are counted by route and status, and their durations go into a
//! histogram, by a middleware around every route; the decoding loop's own
//! counters (tokens, queue, cache) come from its published [`Status`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::serve::worker::Status;

/// Upper bounds (seconds) of the request-duration histogram's buckets.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// One route's duration histogram.
struct Histogram {
    route: String,
    /// Requests at most each bound long (cumulative, as Prometheus wants).
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Request counters and the duration histogram, per route.
#[derive(Default)]
pub struct Metrics {
    /// (route, status) -> count.
    requests: Mutex<Vec<(String, u16, u64)>>,
    durations: Mutex<Vec<Histogram>>,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// The code interpreter's counters.
    pub interpreter: crate::serve::interpreter::InterpreterMetrics,
    /// Generation requests accepted per `model` (the base id or an adapter).
    by_model: Mutex<Vec<(String, u64)>>,
    /// Time to first token and per output token (shared with the handlers'
    /// event channels, which outlive a borrow of the state when streaming).
    pub latency: std::sync::Arc<crate::serve::latency::LatencyMetrics>,
}

impl Metrics {
    /// Counts one accepted generation request for `model`.
    pub fn count_model(&self, model: &str) {
        let mut m = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        match m.iter_mut().find(|(name, _)| name == model) {
            Some(e) => e.1 += 1,
            None => m.push((model.to_string(), 1)),
        }
    }

    fn record(&self, route: &str, status: u16, seconds: f64) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match r.iter_mut().find(|(p, s, _)| p == route && *s == status) {
            Some(e) => e.2 += 1,
            None => r.push((route.to_string(), status, 1)),
        }
        let mut d = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        let i = match d.iter().position(|h| h.route == route) {
            Some(i) => i,
            None => {
                d.push(Histogram {
                    route: route.to_string(),
                    buckets: [0; BUCKETS.len()],
                    sum: 0.0,
                    count: 0,
                });
                d.len() - 1
            }
        };
        let h = &mut d[i];
        for (b, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[b] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The exposition text; `adapters` is how many LoRA adapters are loaded.
    pub fn render(&self, status: &Status, cells: usize, adapters: usize) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "# TYPE cleaner_requests_total counter");
        for (route, st, n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                w,
                "cleaner_requests_total{{route=\"{route}\",status=\"{st}\"}} {n}"
            );
        }
        let _ = writeln!(w, "# TYPE cleaner_request_duration_seconds histogram");
        for Histogram {
            route,
            buckets,
            sum,
            count,
        } in self
            .durations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (b, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(w, "cleaner_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}", buckets[b]);
            }
            let _ = writeln!(
                w,
                "cleaner_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                w,
                "cleaner_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
            );
            let _ = writeln!(
                w,
                "cleaner_request_duration_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
        let _ = writeln!(
            w,
            "# HELP cleaner_model_requests_total generation requests accepted, by the model or LoRA adapter they named\n# TYPE cleaner_model_requests_total counter"
        );
        for (model, n) in self
            .by_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                w,
                "cleaner_model_requests_total{{model=\"{}\"}} {n}",
                label(model)
            );
        }
        let u = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as u64;
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, kind, help, v) in [
            (
                "cleaner_prompt_tokens_total",
                "counter",
                "prompt tokens of admitted requests",
                c(&self.prompt_tokens),
            ),
            (
                "cleaner_completion_tokens_total",
                "counter",
                "tokens sampled",
                c(&status.tokens_generated),
            ),
            (
                "cleaner_decode_steps_total",
                "counter",
                "steps of the decoding loop",
                c(&status.steps),
            ),
            (
                "cleaner_cancelled_requests_total",
                "counter",
                "requests cancelled because the client went away",
                c(&status.cancelled),
            ),
            (
                "cleaner_queued_requests",
                "gauge",
                "requests waiting for slots or cells",
                u(&status.queued),
            ),
            (
                "cleaner_running_requests",
                "gauge",
                "requests generating",
                u(&status.running),
            ),
            (
                "cleaner_open_sequences",
                "gauge",
                "sequences open in the decoder (batch occupancy)",
                u(&status.open_sequences),
            ),
            (
                "cleaner_cached_positions",
                "gauge",
                "cache positions held",
                u(&status.cached_positions),
            ),
            (
                "cleaner_cache_cells",
                "gauge",
                "cache cells shared by all requests",
                cells as u64,
            ),
            (
                "cleaner_adapter_swaps_total",
                "counter",
                "times the decoding loop switched LoRA adapter (or back to the base model)",
                c(&status.adapter_swaps),
            ),
            (
                "cleaner_adapters_loaded",
                "gauge",
                "LoRA adapters loaded",
                adapters as u64,
            ),
        ] {
            let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        self.latency.render(&mut out);
        self.interpreter.render(&mut out);
        out
    }
}

/// Counts and times every request by its route.
pub async fn track(
    State(m): State<std::sync::Arc<super::http::AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req.uri().path().to_string();
    let known = [
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
    ];
    // Unknown paths share one label, so a scan cannot grow the series.
    let route = if known.contains(&route.as_str()) {
        route
    } else {
        "other".to_string()
    };
    let t0 = Instant::now();
    let resp = next.run(req).await;
    m.metrics
        .record(&route, resp.status().as_u16(), t0.elapsed().as_secs_f64());
    resp
}

/// A Prometheus label value, escaped (the base model's id comes from the
/// command line and may hold anything).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
