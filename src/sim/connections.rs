//! The simulator's HTTP client: a fixed set of keep-alive HTTP/1.1 connections, each used by one
//! request at a time, like a load tool's (`wrk`) connections.
//!
//! Why not a general client: the simulator shares the machine with the node it measures, so
//! every microsecond the client spends is taken from the server. A bare hyper connection per
//! slot costs about half what a pooled general-purpose client does per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

/// How a request ended, before the simulator classifies it.
pub enum Reply {
    Answered(StatusCode, Bytes),
    TimedOut,
    Broken,
}

pub struct Connections {
    authority: String,
    slots: Vec<Mutex<Option<SendRequest<Full<Bytes>>>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Connections {
    /// `base` is `http://host:port`; connections are opened on first use.
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
            slots: (0..count.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
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

    /// Sends one request on the next free connection (waiting for one if all are busy).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        bearer: Option<&str>,
        json: Option<Bytes>,
    ) -> Reply {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[index].lock().await;
        let attempt = tokio::time::timeout(self.timeout, async {
            if slot.as_ref().is_none_or(|s| s.is_closed()) {
                *slot = self.connect().await;
            }
            let sender = slot.as_mut()?;
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
            Some((status, bytes))
        })
        .await;
        match attempt {
            Ok(Some((status, bytes))) => Reply::Answered(status, bytes),
            Ok(None) => {
                *slot = None;
                Reply::Broken
            }
            Err(_) => {
                // The connection may still carry the late answer: never reuse it.
                *slot = None;
                Reply::TimedOut
            }
        }
    }
}
