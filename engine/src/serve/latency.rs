//! Token latency as clients see it: time to first token and time per output
//! token, Prometheus histograms (`GET /metrics`).
//!
//! Both are measured where the HTTP layer receives the decoding loop's
//! events ([`TimedEvents`] wraps a request's event channel), so they include
//! the queue, the prefill and the channel, and the decoding loop itself
//! stays free of clocks. Time to first token runs from the moment the
//! handler hands the job to the loop (after parsing and tokenizing, so it is
//! the engine's latency, not the client's upload) to the first token event of
//! any choice; one observation per request that produced a token. Time per
//! output token is the gap between consecutive token events of one choice,
//! split evenly over the tokens the later event carries.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::serve::worker::Event;

/// Bounds (seconds) for time to first token: from an idle server's prefill
/// (milliseconds) to a long wait in the queue under load (a minute).
pub const TTFT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bounds (seconds) for time per output token: one decode step of a small
/// model alone (milliseconds) to a step shared with a large batch or stalled
/// behind another request's prefill.
pub const TPOT_BUCKETS: [f64; 13] = [
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
];

/// A cumulative histogram over fixed bounds, as Prometheus exposes one.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (cumulative).
    cumulative: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            cumulative: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Adds `times` observations of `seconds`.
    pub fn observe_n(&mut self, seconds: f64, times: u64) {
        for (c, bound) in self.cumulative.iter_mut().zip(self.bounds) {
            // `le` is inclusive: a value equal to a bound falls in its bucket.
            if seconds <= *bound {
                *c += times;
            }
        }
        self.sum += seconds * times as f64;
        self.count += times;
    }

    /// Observations at most each bound, then the total (the `+Inf` bucket).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.bounds
            .iter()
            .copied()
            .zip(self.cumulative.iter().copied())
            .chain(std::iter::once((f64::INFINITY, self.count)))
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum in seconds.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The exposition lines of the histogram called `name`.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, n) in self.buckets() {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// The server's two latency histograms.
#[derive(Debug)]
pub struct LatencyMetrics {
    first_token: Mutex<Histogram>,
    per_token: Mutex<Histogram>,
}

impl Default for LatencyMetrics {
    fn default() -> Self {
        LatencyMetrics {
            first_token: Mutex::new(Histogram::new(&TTFT_BUCKETS)),
            per_token: Mutex::new(Histogram::new(&TPOT_BUCKETS)),
        }
    }
}

impl LatencyMetrics {
    /// A copy of the time-to-first-token histogram.
    pub fn first_token(&self) -> Histogram {
        self.first_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A copy of the time-per-output-token histogram.
    pub fn per_token(&self) -> Histogram {
        self.per_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Appends both histograms' exposition text.
    pub fn render(&self, out: &mut String) {
        self.first_token().render(
            "cleaner_time_to_first_token_seconds",
            "from a request's hand-over to the decoding loop to its first token event",
            out,
        );
        self.per_token().render(
            "cleaner_time_per_output_token_seconds",
            "gap between consecutive token events of one choice, per token",
            out,
        );
    }
}

/// A request's event channel that times its token events on the way through.
pub struct TimedEvents {
    rx: UnboundedReceiver<Event>,
    metrics: Arc<LatencyMetrics>,
    /// When the job went to the loop.
    submitted: Instant,
    first_seen: bool,
    /// The last token event of each choice.
    last: Vec<Option<Instant>>,
}

impl TimedEvents {
    /// Starts the clock: call right before the job is submitted.
    pub fn new(rx: UnboundedReceiver<Event>, metrics: Arc<LatencyMetrics>) -> TimedEvents {
        TimedEvents {
            rx,
            metrics,
            submitted: Instant::now(),
            first_seen: false,
            last: Vec::new(),
        }
    }

    /// The next event, as `UnboundedReceiver::recv`.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.rx.recv().await;
        if let Some(Event::Tokens { index, tokens, .. }) = &event {
            self.tokens_arrived(*index, tokens.len(), Instant::now());
        }
        event
    }

    fn tokens_arrived(&mut self, index: usize, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        if !self.first_seen {
            self.first_seen = true;
            let ttft = now.duration_since(self.submitted).as_secs_f64();
            lock(&self.metrics.first_token).observe_n(ttft, 1);
        }
        if self.last.len() <= index {
            self.last.resize(index + 1, None);
        }
        if let Some(prev) = self.last[index].replace(now) {
            // The tokens of one event arrived together; the gap is theirs.
            let gap = now.duration_since(prev).as_secs_f64() / n as f64;
            lock(&self.metrics.per_token).observe_n(gap, n as u64);
        } else if n > 1 {
            // A first event holding several tokens: all but the first were
            // produced after it, at an unknown pace; count them at the first
            // token's time, spread over them (the best the events tell).
            let since = now.duration_since(self.submitted).as_secs_f64() / n as f64;
            lock(&self.metrics.per_token).observe_n(since, n as u64 - 1);
        }
    }
}

fn lock(h: &Mutex<Histogram>) -> std::sync::MutexGuard<'_, Histogram> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive_of_their_bound() {
        let mut h = Histogram::new(&[0.1, 0.5, 1.0]);
        h.observe_n(0.05, 1); // first bucket
        h.observe_n(0.1, 2); // exactly on a bound: counts in it
        h.observe_n(0.7, 1); // third
        h.observe_n(3.0, 1); // only +Inf
        let b: Vec<(f64, u64)> = h.buckets().collect();
        assert_eq!(
            b,
            vec![(0.1, 3), (0.5, 3), (1.0, 4), (f64::INFINITY, 5)],
            "{h:?}"
        );
        assert_eq!(h.count(), 5);
        assert!((h.sum() - (0.05 + 0.2 + 0.7 + 3.0)).abs() < 1e-12);
    }

    #[test]
    fn render_writes_prometheus_histogram_lines() {
        let mut h = Histogram::new(&[0.5, 1.0]);
        h.observe_n(0.25, 1);
        h.observe_n(2.0, 1);
        let mut out = String::new();
        h.render("x_seconds", "help", &mut out);
        assert_eq!(
            out,
            "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"0.5\"} 1\nx_seconds_bucket{le=\"1\"} 1\n\
             x_seconds_bucket{le=\"+Inf\"} 2\nx_seconds_sum 2.25\nx_seconds_count 2\n"
        );
    }

    #[test]
    fn first_token_once_per_request_and_gaps_per_token_of_each_choice() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let metrics = Arc::new(LatencyMetrics::default());
        let mut t = TimedEvents::new(rx, metrics.clone());
        let t0 = t.submitted;
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        t.tokens_arrived(0, 1, at(40)); // request's first token: ttft 0.04
        t.tokens_arrived(1, 1, at(40)); // choice 1's first: no gap, no ttft
        t.tokens_arrived(0, 1, at(60)); // gap 0.02
        t.tokens_arrived(1, 2, at(100)); // 2 tokens over 0.06: 0.03 each
        t.tokens_arrived(0, 0, at(200)); // no tokens: nothing
        let ttft = metrics.first_token();
        assert_eq!(ttft.count(), 1);
        assert!((ttft.sum() - 0.04).abs() < 1e-9, "{ttft:?}");
        let tpot = metrics.per_token();
        assert_eq!(tpot.count(), 3, "{tpot:?}");
        assert!((tpot.sum() - (0.02 + 0.06)).abs() < 1e-9, "{tpot:?}");
        // 0.02 is in the 0.025 bucket, the 0.03s in the 0.05 one.
        let b: Vec<(f64, u64)> = tpot.buckets().collect();
        assert!(b.contains(&(0.01, 0)) && b.contains(&(0.025, 1)) && b.contains(&(0.05, 3)));
    }
}
