//! What the edge learns about every request before a handler runs, and records after it:
//! the request id (taken from `X-Request-Id` or made, and returned), the client's address
//! (`X-Forwarded-For` believed only from `--trusted-proxies`), the request log line, the
//! per-route metrics and the per-second history.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use ipnet::IpNet;

use super::HttpState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// A request's id: the caller's `X-Request-Id` when it is short printable text, else a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The caller's id, if it is 1–128 characters of letters, digits and `-_.:/+=@`
    /// (nothing a log reader or a header could be confused by).
    pub fn parse(value: &HeaderValue) -> Option<RequestId> {
        let text = value.to_str().ok()?;
        let fine = |c: char| c.is_ascii_alphanumeric() || "-_.:/+=@".contains(c);
        (!text.is_empty() && text.len() <= MAX_REQUEST_ID && text.chars().all(fine))
            .then(|| RequestId(text.to_string()))
    }

    pub fn new() -> RequestId {
        RequestId(uuid::Uuid::now_v7().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

/// The address a request came from, as the edge believes it (see [`client_address`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

/// The client of `req`: what the access middleware decided, else the connection's peer.
pub fn client_of(req: &HttpRequest) -> Option<IpAddr> {
    match req.extensions().get::<ClientAddr>() {
        Some(ClientAddr(addr)) => *addr,
        None => req.peer_addr().map(|addr| addr.ip()),
    }
}

/// The client's address: the connection's peer, unless the peer is a trusted proxy; then the
/// `X-Forwarded-For` entries are walked from the right (the nearest hop first) while each hop
/// is trusted. A malformed entry stops the walk at the last trusted hop, so a client cannot
/// pick its own address by sending the header through a proxy that appends to it.
pub fn client_address<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let mut addr = peer?;
    if trusted.is_empty() {
        return Some(addr);
    }
    for entry in forwarded_for.rev() {
        if !trusted.iter().any(|net| net.contains(&addr)) {
            break;
        }
        match entry.trim().parse::<IpAddr>() {
            Ok(next) => addr = next,
            Err(_) => break,
        }
    }
    Some(addr)
}

/// Every `X-Forwarded-For` entry of `req`, in order (the header may be repeated).
fn forwarded_for(req: &ServiceRequest) -> Vec<String> {
    req.headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The middleware: ids and addresses in, then the log line, metrics and history out. Labels
/// are the route pattern (never an id), and the log names the pattern, not the path, so no
/// token or address in a query string reaches a log.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<HttpState>>().cloned();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(RequestId::parse)
        .unwrap_or_default();
    let peer = req.peer_addr().map(|a| a.ip());
    let client = match &state {
        Some(state) if !state.limits.trusted_proxies.is_empty() => {
            let hops = forwarded_for(&req);
            client_address(
                peer,
                hops.iter().map(String::as_str),
                &state.limits.trusted_proxies,
            )
        }
        _ => peer,
    };
    req.extensions_mut().insert(ClientAddr(client));
    req.extensions_mut().insert(id.clone());
    let method = req.method().as_str().to_string();

    let mut response = next.call(req).await?;

    let elapsed = started.elapsed();
    let status = response.status();
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(state) = &state {
        state.stats.record(elapsed, status.is_server_error());
        if state.node.is_draining() {
            // Move keep-alive clients (a balancer's pooled connections) off this node now.
            response
                .response_mut()
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
    }
    tracing::info!(
        target: "gorgon::access",
        request_id = id.as_str(),
        method = method.as_str(),
        route = route.as_str(),
        status = status.as_u16(),
        latency_us = elapsed.as_micros() as u64,
        client = client.map(|a| a.to_string()).as_deref().unwrap_or("-"),
        node = state.as_ref().map(|s| s.node.node_id.as_str()).unwrap_or(""),
        "request"
    );
    metrics::histogram!(
        "gorgon_http_request_duration_seconds",
        "method" => method.clone(),
        "route" => route.clone(),
    )
    .record(elapsed.as_secs_f64());
    metrics::counter!(
        "gorgon_http_requests_total",
        "method" => method,
        "route" => route,
        "status" => status.as_u16().to_string(),
    )
    .increment(1);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_address(ip("192.0.2.7"), ["1.2.3.4"].into_iter(), &trusted);
        assert_eq!(got, ip("192.0.2.7"));
        let got = client_address(ip("10.0.0.1"), ["1.2.3.4"].into_iter(), &[]);
        assert_eq!(
            got,
            ip("10.0.0.1"),
            "no trusted proxies: the header is ignored"
        );
    }

    #[test]
    fn trusted_hops_are_walked_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client forged the first entry; the proxies appended the rest.
        let hops = ["6.6.6.6", "198.51.100.9", "10.1.1.1"];
        let got = client_address(ip("127.0.0.1"), hops.into_iter(), &trusted);
        assert_eq!(got, ip("198.51.100.9"));
    }

    #[test]
    fn a_malformed_entry_stops_at_the_last_trusted_hop() {
        let trusted = nets(&["127.0.0.1/32"]);
        let got = client_address(ip("127.0.0.1"), ["unknown"].into_iter(), &trusted);
        assert_eq!(got, ip("127.0.0.1"));
        let got = client_address(ip("127.0.0.1"), [" 2001:db8::1 "].into_iter(), &trusted);
        assert_eq!(got, ip("2001:db8::1"));
    }

    #[test]
    fn request_ids_are_taken_only_when_plain() {
        let ok = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(RequestId::parse(&ok).unwrap().as_str(), "abc-123_x.y:z");
        for bad in ["", "with space", "quote\"", &"a".repeat(129)] {
            assert!(RequestId::parse(&HeaderValue::from_str(bad).unwrap()).is_none());
        }
        assert_eq!(RequestId::new().as_str().len(), 32);
    }
}
