//! Guards of the HTTP edge against clients that hold resources without finishing requests:
//! a deadline on reading request bodies, a cap on connections per client address, the listen
//! backlog, and the process's open-file limit.
//!
//! Why: 20,000 connections each sending a declared 200 kB body one byte every 4 s exhausted the
//! file descriptors and the memory of a node (its health check stopped answering). actix-web's
//! `client_request_timeout` bounds only the request head; the body had no deadline at all. The
//! total number of connections is capped in [`super::server`] (`max_connections`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError};
use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;

use crate::error::Error;

/// Binds the HTTP listener with an explicit accept backlog (connections the kernel queues
/// before the server accepts them; beyond it new connections are refused, not queued forever).
pub fn bind(address: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = address.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} names no address"),
        )
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.clamp(1, i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Raises the soft limit of open files to the hard limit (each connection is a file), and says
/// what it is now; `None` where it cannot be read.
pub fn raise_open_files() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return None;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
        }
    }
    tracing::info!(
        before,
        now = limit.rlim_cur,
        hard = limit.rlim_max,
        "open-file limit"
    );
    Some(limit.rlim_cur)
}

/// The open-file limit as it is, without changing it.
pub fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// Connections a node keeps for itself (store files, Redis, cluster peers, outbound webhooks)
/// when it sizes the HTTP connection cap to the open-file limit.
pub const RESERVED_FILES: u64 = 256;

/// The HTTP connection cap per worker: `total` split over the workers, lowered (with a
/// warning) when the open-file limit could not hold it.
pub fn connections_per_worker(total: usize, workers: usize) -> usize {
    let mut total = total.max(1);
    if let Some(files) = open_files_limit() {
        let room = files.saturating_sub(RESERVED_FILES).max(64) as usize;
        if total > room {
            tracing::warn!(
                configured = total,
                open_file_limit = files,
                using = room,
                "--http-max-connections lowered to fit the open-file limit"
            );
            total = room;
        }
    }
    total.div_ceil(workers.max(1)).max(1)
}

// ---- body deadline -------------------------------------------------------------------------

/// A request body that fails with `TimedOut` once its deadline has passed (flagging `expired`).
struct DeadlineBody {
    inner: Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl Stream for DeadlineBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(chunk) = Pin::new(&mut this.inner).poll_next(cx) {
            return Poll::Ready(chunk);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::Relaxed);
                let timed_out = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                );
                Poll::Ready(Some(Err(PayloadError::Io(timed_out))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Whether a request sends a body this middleware should time: a declared length or chunks,
/// and not a protocol upgrade (a WebSocket's frames flow through the payload for its lifetime).
fn has_body(req: &ServiceRequest) -> bool {
    use actix_web::http::header;
    let headers = req.headers();
    if headers.contains_key(header::UPGRADE) {
        return false;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    declared || headers.contains_key(header::TRANSFER_ENCODING)
}

/// Middleware: the whole body must arrive within `deadline` of the request head, or the request
/// is answered 408 and its connection closed (actix closes a connection whose body was not read
/// to its end), so a client sending a byte now and then cannot hold a connection and a buffer.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    deadline: Duration,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if deadline.is_zero() || !has_body(&req) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let expired = Arc::new(AtomicBool::new(false));
    let body = DeadlineBody {
        inner: req.take_payload(),
        deadline: Box::pin(tokio::time::sleep(deadline)),
        expired: expired.clone(),
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(body),
    });
    let response = next.call(req).await;
    if !expired.load(Ordering::Relaxed) {
        return response.map(ServiceResponse::map_into_boxed_body);
    }
    metrics::counter!("gorgon_http_body_timeouts_total").increment(1);
    // actix closes a connection whose declared body was left unread, but it drains a chunked
    // one to its end, as slowly as the client sends it: stop reading the socket instead.
    if let Some(socket) = response
        .as_ref()
        .ok()
        .and_then(|r| r.request().conn_data::<Socket>())
    {
        socket.stop_reading();
    }
    let error = Error::RequestTimeout(format!(
        "the request body did not arrive within {} ms",
        deadline.as_millis()
    ));
    match response {
        Ok(response) => {
            let (request, _) = response.into_parts();
            Ok(ServiceResponse::new(request, error.error_response()))
        }
        Err(_) => Err(error.into()),
    }
}

// ---- connections -------------------------------------------------------------------------

/// The socket of a connection, kept in its connection data (which lives exactly as long as the
/// connection, so the descriptor stays this socket's while a request can see it).
struct Socket(std::os::fd::RawFd);

impl Socket {
    /// Shuts the read side: the server sees the end of the stream and closes the connection
    /// once its response is written.
    fn stop_reading(&self) {
        // SAFETY: the descriptor is this connection's open socket (see the type's comment);
        // shutdown neither closes nor frees it.
        unsafe { libc::shutdown(self.0, libc::SHUT_RD) };
    }
}

/// actix's `on_connect` for every connection: keeps its socket handy (for [`body_deadline`])
/// and, with a per-address limit, counts it or closes it.
pub fn on_connect(
    per_address: Option<&PerAddress>,
    connection: &dyn std::any::Any,
    data: &mut actix_web::dev::Extensions,
) {
    use std::os::fd::AsRawFd;
    let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    if let Some(per_address) = per_address {
        if !per_address.admit(stream, data) {
            return;
        }
    }
    data.insert(Socket(stream.as_raw_fd()));
}

// ---- connections per address ---------------------------------------------------------------

/// Open connections per client address, shared by every HTTP worker; an address's entry goes
/// when its last connection closes, so the map holds only addresses connected now.
#[derive(Clone)]
pub struct PerAddress {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection, counted while it lives (actix drops a connection's data when it closes).
struct Counted {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl PerAddress {
    pub fn new(limit: usize) -> PerAddress {
        PerAddress {
            limit,
            open: Default::default(),
        }
    }

    /// Counts the connection, or closes it at once (false) when its address already holds
    /// `limit` connections (no byte of it is read).
    fn admit(
        &self,
        stream: &actix_web::rt::net::TcpStream,
        data: &mut actix_web::dev::Extensions,
    ) -> bool {
        let Ok(peer) = stream.peer_addr() else {
            return true;
        };
        let ip = peer.ip();
        {
            let mut open = self.open.lock();
            let n = open.entry(ip).or_insert(0);
            if *n >= self.limit {
                drop(open);
                metrics::counter!("gorgon_http_connections_refused_total", "reason" => "per_address")
                    .increment(1);
                // Shutting the socket down makes the server read end-of-stream and drop it.
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
                return false;
            }
            *n += 1;
        }
        data.insert(Counted {
            ip,
            open: self.open.clone(),
        });
        true
    }
}
