//! The simulator's HTTP client: a fixed set of keep-alive HTTP/1.1 connections, each used by one
//! request at a time, like a load tool's (`wrk`) connections.
//!
//! Why not a general client: the simulator shares the machine with the node it measures, so
//! every microsecond the client spends is taken from the server. A bare hyper connection per
//! slot costs about half what a pooled general-purpose client does per request.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

/// How a request ended, before the simulator classifies it.
pub enum Reply {
    Answered(StatusCode, Bytes),
    TimedOut,
    Broken,
}

pub struct Connections {
    authority: String,
    /// Open connections not in use, most recently used last: a light load reuses one warm
    /// connection instead of cycling through all of them.
    idle: parking_lot::Mutex<Vec<SendRequest<Full<Bytes>>>>,
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
        let reused = self.idle.lock().pop().filter(|s| !s.is_closed());
        let attempt = tokio::time::timeout(self.timeout, async {
            let mut sender = match reused {
                Some(sender) => sender,
                None => self.connect().await?,
            };
            sender.ready().await.ok()?;
            let mut request = Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(header::HOST, &self.authority);
            if let Some(token) = bearer {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let body = match json {
                Some(bytes) => {
                    request = request.header(header::CONTENT_TYPE, "application/json");
                    Full::new(bytes)
                }
                None => Full::new(Bytes::new()),
            };
            let response = sender.send_request(request.body(body).ok()?).await.ok()?;
            let status = response.status();
            let bytes = response.into_body().collect().await.ok()?.to_bytes();
            Some((sender, status, bytes))
        })
        .await;
        match attempt {
            Ok(Some((sender, status, bytes))) => {
                self.idle.lock().push(sender);
                Reply::Answered(status, bytes)
            }
            Ok(None) => Reply::Broken,
            // A timed-out connection may still carry the late answer: it is dropped, not reused.
            Err(_) => Reply::TimedOut,
        }
    }
}
