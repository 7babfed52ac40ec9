//! The status listener's HTTP: requests parsed with `httparse`, answers rendered from the engine's
//! [`StatusSnapshot`]: `/` (the page), `/status.json`, `/metrics` (Prometheus text format, by
//! `prometheus-client`) and `/health`.
//!
//! The runtimes only move the bytes: read into a buffer until [`parse`] finds a complete request, take a
//! snapshot, write [`respond`]'s answer, close. One request per connection (`Connection: close`), which is all a
//! scraper, a load balancer's health check or a browser refreshing a page needs.

use crate::metrics;
use redis_proxy_engine::{Health, Mode, Role, ServerAddress, StatusSnapshot, Target};
use serde_json::{json, Value};
use std::io;
use std::time::{Duration, Instant};

/// The largest request head accepted; a longer one is answered 431 and closed.
pub const MAX_REQUEST: usize = 8 * 1024;

/// How long a status connection may take to send its request and read the answer before it is dropped.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Status connections served at once; more wait in the listen backlog.
pub const MAX_EXCHANGES: usize = 32;

/// What a status request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the page.
    Page,
    /// `GET /status.json`.
    Json,
    /// `GET /metrics`.
    Metrics,
    /// `GET /health`.
    Health,
    /// Any other path.
    NotFound,
    /// A method other than `GET` or `HEAD`.
    MethodNotAllowed,
}

/// What [`parse`] made of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The request head is not complete yet: read more.
    Partial,
    /// A complete request for this route.
    Request(Route),
    /// Not HTTP, or too long: write this answer and close.
    Bad(Vec<u8>),
}

/// One status connection's exchange, independent of how its socket is driven: read the request head, answer it,
/// done.
#[derive(Debug)]
pub struct Exchange {
    request: Vec<u8>,
    answer: Option<Vec<u8>>,
    written: usize,
    started: Instant,
}

/// What a runtime does with a status connection after [`Exchange::advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeStep {
    /// Waiting for the socket: call again when it is readable or writable.
    Wait,
    /// The answer is written: shut down the write side and drop the socket.
    Done,
    /// The peer left or the socket broke: drop it.
    Drop,
}

impl Exchange {
    /// A connection accepted at `now`.
    pub fn new(now: Instant) -> Exchange {
        Exchange { request: Vec::new(), answer: None, written: 0, started: now }
    }

    /// When the connection is dropped if it has not finished.
    pub fn deadline(&self) -> Instant {
        self.started + EXCHANGE_TIMEOUT
    }

    /// Reads what the socket has (`read`: one non-blocking read), answers a complete request from `snapshot`,
    /// and writes what the socket takes (`write`: one non-blocking write).
    pub fn advance(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
        mut write: impl FnMut(&[u8]) -> io::Result<usize>,
        snapshot: impl FnOnce() -> StatusSnapshot,
    ) -> ExchangeStep {
        if self.answer.is_none() {
            let mut chunk = [0u8; 2048];
            loop {
                match read(&mut chunk) {
                    Ok(0) => return ExchangeStep::Drop,
                    Ok(n) => self.request.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return ExchangeStep::Drop,
                }
                if self.request.len() > MAX_REQUEST {
                    break;
                }
            }
            self.answer = match parse(&self.request) {
                Parsed::Partial => return ExchangeStep::Wait,
                Parsed::Request(route) => Some(respond(route, &snapshot())),
                Parsed::Bad(answer) => Some(answer),
            };
        }
        let answer = self.answer.as_deref().unwrap_or_default();
        while self.written < answer.len() {
            match write(&answer[self.written..]) {
                Ok(0) => return ExchangeStep::Drop,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ExchangeStep::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ExchangeStep::Drop,
            }
        }
        ExchangeStep::Done
    }
}

/// Parses the request head in `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => return Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(answer(431, "Request Header Fields Too Large", "text/plain", b"request too large\n"))
        }
        Err(error) => return Parsed::Bad(answer(400, "Bad Request", "text/plain", format!("{error}\n").as_bytes())),
    }
    if !matches!(request.method, Some("GET" | "HEAD")) {
        return Parsed::Request(Route::MethodNotAllowed);
    }
    let path = request.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Parsed::Request(match path {
        "/" | "/index.html" => Route::Page,
        "/status.json" => Route::Json,
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        _ => Route::NotFound,
    })
}

/// The complete HTTP answer to `route` from `snapshot`.
pub fn respond(route: Route, snapshot: &StatusSnapshot) -> Vec<u8> {
    match route {
        Route::Page => answer(200, "OK", "text/html; charset=utf-8", page(snapshot).as_bytes()),
        Route::Json => answer(200, "OK", "application/json", status_json(snapshot).to_string().as_bytes()),
        Route::Metrics => answer(200, "OK", metrics::CONTENT_TYPE, metrics::render(snapshot).as_bytes()),
        Route::Health => match &snapshot.no_master_reason {
            None => answer(200, "OK", "text/plain", b"OK: a master is routable\n"),
            Some(reason) => answer(503, "Service Unavailable", "text/plain", format!("{reason}\n").as_bytes()),
        },
        Route::NotFound => answer(404, "Not Found", "text/plain", b"try /, /status.json, /metrics or /health\n"),
        Route::MethodNotAllowed => answer(405, "Method Not Allowed", "text/plain", b"only GET\n"),
    }
}

fn answer(code: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn address(address: &ServerAddress) -> String {
    address.to_string()
}

/// The snapshot as JSON (documented in `docs/operating.md`, "Status over HTTP").
pub fn status_json(snapshot: &StatusSnapshot) -> Value {
    let counters = &snapshot.counters;
    let requests: serde_json::Map<String, Value> = Target::ALL
        .iter()
        .map(|target| {
            let by_class: serde_json::Map<String, Value> = redis_proxy_engine::Class::ALL
                .iter()
                .map(|class| (class.name().to_string(), json!(counters.requests[*target as usize][*class as usize])))
                .collect();
            (target.name().to_string(), Value::Object(by_class))
        })
        .collect();
    json!({
        "master": snapshot.master.as_ref().map(address),
        "master_since_seconds": snapshot.master_since.map(seconds),
        "healthy": snapshot.healthy(),
        "no_master_reason": snapshot.no_master_reason,
        "mode": match snapshot.mode { Mode::AllToMaster => "allToMaster", Mode::ReadsToSlaves => "readsToSlaves" },
        "servers": snapshot.servers.iter().map(|s| json!({
            "address": address(&s.address),
            "role": s.role.map(|r| match r { Role::Master => "master", Role::Replica => "replica" }),
            "routed_master": s.routed_master,
            "health": s.health.name(),
            "why": s.why,
            "repl_offset": s.repl_offset,
            "lag_bytes": s.lag_bytes,
            "lag_seconds": s.lag_seconds,
            "link_up": s.link_up,
            "replication": s.replication,
            "no_reads_because": s.no_reads_because,
            "obstacle": s.obstacle,
            "last_ok_seconds_ago": s.last_ok_ago.map(seconds),
            "connections": {
                "shared": s.connections.shared,
                "private": s.connections.private,
                "probe": s.connections.probe,
            },
        })).collect::<Vec<_>>(),
        "failovers": snapshot.failovers.iter().map(|f| json!({
            "from": f.from.as_ref().map(address),
            "to": f.to.as_ref().map(address),
            "reason": f.reason,
            "chosen_by": f.chosen_by,
            "started_seconds_ago": seconds(f.started_ago),
            "duration_seconds": f.duration.map(seconds),
        })).collect::<Vec<_>>(),
        "cluster": snapshot.cluster.as_ref().map(|c| json!({
            "served_slots": c.served_slots,
            "map_age_seconds": c.map_age.map(seconds),
            "map_from": c.map_from.as_ref().map(address),
            "in_flight": c.in_flight,
            "shards": c.shards.iter().map(|s| json!({
                "primary": address(&s.primary),
                "replicas": s.replicas.iter().map(address).collect::<Vec<_>>(),
                "slots": s.slots,
                "epoch": s.epoch,
                "usable": s.usable,
            })).collect::<Vec<_>>(),
            "counts": {
                "refreshes": c.counts.refreshes,
                "maps_refused": c.counts.maps_refused,
                "moved": c.counts.moved,
                "ask": c.counts.ask,
                "retries": c.counts.retries,
                "fanouts": c.counts.fanouts,
            },
        })),
        "clients": snapshot.clients,
        "held_requests": snapshot.held_requests,
        "held_bytes": snapshot.held_bytes,
        "requests_per_second": requests_per_second(snapshot),
        "trend": trend_json(snapshot),
        "counters": {
            "clients_accepted": counters.clients_accepted,
            "requests": requests,
            "errors": {
                "protocol": counters.errors.protocol,
                "backend_lost": counters.errors.backend_lost,
                "hold_expired": counters.errors.hold_expired,
                "client_rejected": counters.errors.client_rejected,
                "output_limit": counters.errors.output_limit,
            },
            "bytes_in": counters.bytes_in,
            "bytes_out": counters.bytes_out,
            "servers_down": counters.servers_down,
        },
    })
}

/// Requests answered per second lately: from the newest trend sample at least a second old to the snapshot's own
/// counters (None in the first second after start). The page shows it at once, without waiting for a second
/// snapshot of its own.
pub fn requests_per_second(snapshot: &StatusSnapshot) -> Option<f64> {
    let now: u64 = snapshot.counters.requests.iter().flatten().sum();
    let sample = snapshot.trend.iter().rev().find(|s| s.ago >= Duration::from_secs(1))?;
    let then: u64 = sample.requests_total.iter().sum();
    Some(now.saturating_sub(then) as f64 / sample.ago.as_secs_f64())
}

/// The trend samples as JSON for the page's charts: per sample, its age, the requests per second by target since
/// the sample before (null for the first), the latency percentiles in milliseconds, the held requests and each
/// replica's lag in bytes.
fn trend_json(snapshot: &StatusSnapshot) -> Value {
    let milliseconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let mut previous: Option<&redis_proxy_engine::TrendSample> = None;
    let mut samples = Vec::with_capacity(snapshot.trend.len());
    for sample in &snapshot.trend {
        let rates = previous.filter(|p| p.ago > sample.ago).map(|p| {
            let seconds = (p.ago - sample.ago).as_secs_f64();
            let by_target: serde_json::Map<String, Value> = Target::ALL
                .iter()
                .map(|t| {
                    let index = *t as usize;
                    let delta = sample.requests_total[index].saturating_sub(p.requests_total[index]);
                    (t.name().to_string(), json!(delta as f64 / seconds))
                })
                .collect();
            Value::Object(by_target)
        });
        let lag: serde_json::Map<String, Value> =
            sample.lag_bytes.iter().map(|(server, bytes)| (address(server), json!(bytes))).collect();
        samples.push(json!({
            "seconds_ago": seconds(sample.ago),
            "requests_per_second": rates,
            "latency_p50_ms": milliseconds(sample.latency_p50),
            "latency_p99_ms": milliseconds(sample.latency_p99),
            "held_requests": sample.held_requests,
            "lag_bytes": lag,
        }));
        previous = Some(sample);
    }
    json!({
        "interval_seconds": redis_proxy_engine::TREND_INTERVAL.as_secs(),
        "window_seconds": redis_proxy_engine::TREND_WINDOW.as_secs(),
        "samples": samples,
    })
}

/// Health states in the page's colours.
fn health_class(health: Health) -> &'static str {
    match health {
        Health::Up => "up",
        Health::Busy | Health::Suspect => "warn",
        Health::Unreachable | Health::Down => "down",
    }
}

/// The status page: self-contained (inline style and script, no external asset), so it works offline. It carries
/// the snapshot it was served with, renders it at once, then refreshes from `/status.json` every 2 s.
pub fn page(snapshot: &StatusSnapshot) -> String {
    // `</` inside the embedded JSON would end the script element early.
    let initial = status_json(snapshot).to_string().replace("</", "<\\/");
    let classes = Health::ALL.iter().map(|h| format!("{:?}: {:?}", h.name(), health_class(*h))).collect::<Vec<_>>();
    PAGE.replace("/*INITIAL*/null", &initial).replace("/*CLASSES*/", &classes.join(", "))
}

/// The page template: `status.html` beside this file.
const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_refuses_garbage() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Parsed::Request(Route::Metrics));
        assert_eq!(parse(b"GET /health?x=1 HTTP/1.0\r\n\r\n"), Parsed::Request(Route::Health));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Parsed::Request(Route::Page));
        assert_eq!(parse(b"POST / HTTP/1.1\r\n\r\n"), Parsed::Request(Route::MethodNotAllowed));
        assert_eq!(parse(b"GET /nope HTTP/1.1\r\n\r\n"), Parsed::Request(Route::NotFound));
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHo"), Parsed::Partial);
        assert!(matches!(parse(b"\x00\x01 nonsense\r\n\r\n"), Parsed::Bad(b) if b.starts_with(b"HTTP/1.1 400")));
        let long = vec![b'a'; MAX_REQUEST + 1];
        assert!(matches!(parse(&long), Parsed::Bad(b) if b.starts_with(b"HTTP/1.1 4")));
    }
}
