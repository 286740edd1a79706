//! A real HTTP receiver on a loopback port that records every request it gets, answering each
//! path with a status, delay, headers and body the test chooses. A request is noted twice: as
//! an arrival once its body is read, and as received when it is answered, after any delay, so
//! a test can see a delivery while it is in flight.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The exact body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// Every value of a header, by case-insensitive name.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }
}

/// How the receiver answers a path.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The status it answers with.
    pub status: u16,
    /// How long it waits before answering.
    pub delay: Duration,
    /// Extra headers of the answer, such as `Retry-After` or `Location`.
    pub headers: Vec<(String, String)>,
    /// The answer's body; `None` answers `ok`.
    pub body: Option<Bytes>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            status: 200,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: None,
        }
    }
}

impl Behaviour {
    /// Answers at once with this status and the body `ok`.
    pub fn status(status: u16) -> Self {
        Behaviour {
            status,
            ..Behaviour::default()
        }
    }

    /// The same, answered after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The same, with one more header in the answer.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same, with this body instead of `ok`.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }
}

#[derive(Default)]
struct State {
    /// Requests read whole, answered or not yet.
    arrivals: Mutex<Vec<Received>>,
    /// Requests answered.
    received: Mutex<Vec<Received>>,
    behaviours: Mutex<HashMap<String, Behaviour>>,
    arrived: Notify,
    /// Connections accepted so far.
    connections: std::sync::atomic::AtomicUsize,
    /// Requests read and not yet answered, and the most there have been at once.
    in_flight: Mutex<(usize, usize)>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Result<Self> {
        Self::start_on(0).await
    }

    /// Starts a receiver on this loopback port (0 for any).
    pub async fn start_on(port: u16) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                shared.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, state, task })
    }

    /// Connections accepted since the receiver started.
    pub fn connections(&self) -> usize {
        self.state.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most requests this receiver has held at once, read and not yet answered.
    pub fn most_in_flight(&self) -> usize {
        self.state.in_flight.lock().unwrap().1
    }

    /// The URL of a path on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers requests to `path` (without query) this way from now on.
    pub fn set_behaviour(&self, path: &str, behaviour: Behaviour) {
        self.state.behaviours.lock().unwrap().insert(path.to_owned(), behaviour);
    }

    /// Forgets every request read and answered so far (a warm-up's), so counts start again.
    pub fn forget(&self) {
        self.state.arrivals.lock().unwrap().clear();
        self.state.received.lock().unwrap().clear();
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Every request read so far, including those still waiting for their delayed answer.
    pub fn arrivals(&self) -> Vec<Received> {
        self.state.arrivals.lock().unwrap().clone()
    }

    /// Waits until at least `count` requests have been read, answered or not.
    pub async fn wait_for_arrivals(&self, count: usize, within: Duration) -> Result<Vec<Received>> {
        self.wait_until(count, within, "requests were read", || self.arrivals())
            .await
    }

    /// Waits until at least `count` requests on `path` (without query) have been read,
    /// answered or not; answers them in the order they were read.
    pub async fn wait_for_arrivals_on(&self, path: &str, count: usize, within: Duration) -> Result<Vec<Received>> {
        let what = format!("requests were read on {path}");
        self.wait_until(count, within, &what, || {
            self.arrivals()
                .into_iter()
                .filter(|r| r.path.split('?').next() == Some(path))
                .collect()
        })
        .await
    }

    /// Everything received so far on a path (without query).
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .collect()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Waits until at least `count` requests have arrived on `path` (None: anywhere).
    pub async fn wait_for(&self, path: Option<&str>, count: usize, within: Duration) -> Result<Vec<Received>> {
        let what = format!("requests arrived on {path:?}");
        self.wait_until(count, within, &what, || match path {
            Some(path) => self.received_on(path),
            None => self.received(),
        })
        .await
    }

    /// Waits until at least `count` requests have arrived anywhere, reading only the count
    /// (cheap enough to poll while thousands arrive).
    pub async fn wait_for_count(&self, count: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.count() < count {
            if Instant::now() > deadline {
                bail!("{} of {count} requests arrived within {within:?}", self.count());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Waits [`QUIET`], then checks that exactly `count` requests arrived on `path` in all;
    /// answers them.
    pub async fn exactly_after_a_while(&self, path: &str, count: usize) -> Result<Vec<Received>> {
        tokio::time::sleep(QUIET).await;
        let got = self.received_on(path);
        ensure!(
            got.len() == count,
            "{} requests arrived on {path}, expected {count}: {:?}",
            got.len(),
            summary(&got)
        );
        Ok(got)
    }

    async fn wait_until(
        &self,
        count: usize,
        within: Duration,
        what: &str,
        current: impl Fn() -> Vec<Received>,
    ) -> Result<Vec<Received>> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            let got = current();
            if got.len() >= count {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} of {count} {what} within {within:?}", got.len());
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), arrived).await;
        }
    }
}

/// How long to wait before concluding that nothing more arrives.
pub const QUIET: Duration = Duration::from_millis(1500);

/// A short description of requests for failure messages (bodies may be a MiB).
pub fn summary(requests: &[Received]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            let head: Vec<u8> = r.body.iter().take(40).copied().collect();
            format!(
                "{} {} ({} bytes: {:?})",
                r.method,
                r.path,
                r.body.len(),
                String::from_utf8_lossy(&head)
            )
        })
        .collect()
}

/// The bodies of requests, as text, sorted.
pub fn bodies(requests: &[Received]) -> Vec<String> {
    let mut bodies: Vec<String> = requests
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    bodies.sort();
    bodies
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let bare = path.split('?').next().unwrap_or_default().to_owned();
    let behaviour = state.behaviours.lock().unwrap().get(&bare).cloned().unwrap_or_default();
    let mut request = Received {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    };
    state.arrivals.lock().unwrap().push(request.clone());
    state.arrived.notify_waiters();
    {
        let mut in_flight = state.in_flight.lock().unwrap();
        in_flight.0 += 1;
        in_flight.1 = in_flight.1.max(in_flight.0);
    }
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
        request.at = Instant::now();
    }
    state.in_flight.lock().unwrap().0 -= 1;
    state.received.lock().unwrap().push(request);
    state.arrived.notify_waiters();
    let body = behaviour.body.unwrap_or_else(|| Bytes::from_static(b"ok"));
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(behaviour.status).unwrap_or(hyper::StatusCode::OK);
    for (name, value) in &behaviour.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}
