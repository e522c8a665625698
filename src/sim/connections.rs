//! The simulator's HTTP client: a fixed set of keep-alive HTTP/1.1 connections, each used by one
//! request at a time, like a load tool's (`wrk`) connections.
//!
//! Why not a general client: the simulator shares the machine with the node it measures, so
//! every microsecond the client spends is taken from the server. A bare hyper connection per
//! slot costs about half what a pooled general-purpose client does per request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

/// Idle connections older than this are not reused: well under the keep-alive timeouts of
/// servers and balancers (HAProxy's `timeout http-keep-alive` in deploy/haproxy.cfg is 10 s).
const MAX_IDLE: Duration = Duration::from_secs(4);

/// How a request ended, before the simulator classifies it.
pub enum Reply {
    Answered(StatusCode, Bytes),
    TimedOut,
    Broken,
}

pub struct Connections {
    authority: String,
    /// Open connections not in use with when each was last used, most recently used last: a
    /// light load reuses one warm connection instead of cycling through all of them.
    idle: parking_lot::Mutex<Vec<(SendRequest<Full<Bytes>>, Instant)>>,
    /// At most this many connections exist (busy or idle).
    slots: Semaphore,
    timeout: Duration,
}

impl Connections {
    /// `base` is `http://host:port`; connections are opened as needed, up to `count`.
    pub fn new(base: &str, count: usize, timeout: Duration) -> anyhow::Result<Self> {
        let uri: http::Uri = base.parse()?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "the simulator speaks plain http: {base}"
        );
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| anyhow::anyhow!("no host in {base}"))?;
        Ok(Connections {
            authority,
            idle: parking_lot::Mutex::new(Vec::new()),
            slots: Semaphore::new(count.max(1)),
            timeout,
        })
    }

    async fn connect(&self) -> Option<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Some(sender)
    }

    /// Sends one request on a free connection (waiting for one if all are busy).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        bearer: Option<&str>,
        json: Option<Bytes>,
    ) -> Reply {
        let Ok(_slot) = self.slots.acquire().await else {
            return Reply::Broken;
        };
        // A connection idle for long may be closing at the server's end (a balancer's keep-alive
        // timeout) as this request goes out: it would break with nothing said about the
        // request, so it is dropped instead of reused.
        let reused = self
            .idle
            .lock()
            .pop()
            .filter(|(s, used)| !s.is_closed() && used.elapsed() < MAX_IDLE)
            .map(|(s, _)| s);
        let attempt = tokio::time::timeout(self.timeout, async {
            let mut reused = reused;
            // A second try only when the first connection closed before the request left it
            // (nothing reached the server, whatever the method), as pooled clients do.
            for first in [true, false] {
                let mut sender = match reused.take() {
                    Some(sender) => sender,
                    None => match self.connect().await {
                        Some(sender) => sender,
                        None if first => continue,
                        None => return None,
                    },
                };
                if sender.ready().await.is_err() {
                    if first {
                        continue;
                    }
                    return None;
                }
                let mut request = Request::builder()
                    .method(method.clone())
                    .uri(path_and_query)
                    .header(header::HOST, &self.authority);
                if let Some(token) = bearer {
                    request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
                }
                let body = match &json {
                    Some(bytes) => {
                        request = request.header(header::CONTENT_TYPE, "application/json");
                        Full::new(bytes.clone())
                    }
                    None => Full::new(Bytes::new()),
                };
                let response = match sender.send_request(request.body(body).ok()?).await {
                    Ok(response) => response,
                    Err(e) if first && e.is_canceled() => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "a request broke without an answer");
                        return None;
                    }
                };
                let status = response.status();
                let bytes = response.into_body().collect().await.ok()?.to_bytes();
                return Some((sender, status, bytes));
            }
            None
        })
        .await;
        match attempt {
            Ok(Some((sender, status, bytes))) => {
                self.idle.lock().push((sender, Instant::now()));
                Reply::Answered(status, bytes)
            }
            Ok(None) => Reply::Broken,
            // A timed-out connection may still carry the late answer: it is dropped, not reused.
            Err(_) => Reply::TimedOut,
        }
    }
}
