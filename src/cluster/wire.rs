//! The wire of direct calls between nodes: length-prefixed frames on one TCP connection per pair
//! of nodes, opened by a mutual challenge/response on the cluster cookie.
//!
//! Frames are `u32` big-endian length, then the payload. A request's payload is its id (`u64`),
//! the role (`u8`, index in [`Role::ALL`]) and the request as JSON; a reply's is the id and
//! `Result<Reply, Error>` as JSON. Many calls share a connection at once; replies come back in
//! any order, matched by id.
//!
//! The handshake proves to each side that the other knows the cookie without sending it, and
//! binds the proof to fresh nonces of both sides (no replay) and to the direction (a server's
//! proof cannot be reflected as a client's):
//!
//! 1. client → server: client nonce (32 bytes)
//! 2. server → client: server nonce, HMAC(cookie, "server" ‖ client nonce ‖ server nonce)
//! 3. client → server: HMAC(cookie, "client" ‖ client nonce ‖ server nonce)
//!
//! Either side closes the connection on a wrong proof. Like `ractor_cluster`'s own session, the
//! traffic after the handshake is not encrypted.

use std::future::Future;
use std::io;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::bus::Role;

type HmacSha256 = Hmac<Sha256>;

const NONCE: usize = 32;
const PROOF: usize = 32;
/// Protocol tag, mixed into every proof: a different protocol version cannot authenticate.
const TAG: &[u8] = b"gorgon-direct-v1";

fn proof(cookie: &str, side: &[u8], client: &[u8], server: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(cookie.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(TAG);
    mac.update(side);
    mac.update(client);
    mac.update(server);
    mac
}

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, what.to_string())
}

/// A handshake that does not finish in `timeout` fails (a silent peer must not hold a task).
async fn within(
    timeout: Duration,
    exchange: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// The client's half of the handshake.
pub async fn handshake_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    cookie: &str,
    timeout: Duration,
) -> io::Result<()> {
    let exchange = async {
        let mut client_nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut client_nonce);
        stream.write_all(&client_nonce).await?;
        stream.flush().await?;
        let mut answer = [0u8; NONCE + PROOF];
        stream.read_exact(&mut answer).await?;
        let (server_nonce, server_proof) = answer.split_at(NONCE);
        proof(cookie, b"server", &client_nonce, server_nonce)
            .verify_slice(server_proof)
            .map_err(|_| refused("the peer does not know the cluster cookie"))?;
        let mine = proof(cookie, b"client", &client_nonce, server_nonce).finalize();
        stream.write_all(&mine.into_bytes()).await?;
        stream.flush().await
    };
    within(timeout, exchange).await
}

/// The server's half of the handshake.
pub async fn handshake_server<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    cookie: &str,
    timeout: Duration,
) -> io::Result<()> {
    let exchange = async {
        let mut client_nonce = [0u8; NONCE];
        stream.read_exact(&mut client_nonce).await?;
        let mut server_nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut server_nonce);
        let mine = proof(cookie, b"server", &client_nonce, &server_nonce).finalize();
        let mut answer = Vec::with_capacity(NONCE + PROOF);
        answer.extend_from_slice(&server_nonce);
        answer.extend_from_slice(&mine.into_bytes());
        stream.write_all(&answer).await?;
        stream.flush().await?;
        let mut client_proof = [0u8; PROOF];
        stream.read_exact(&mut client_proof).await?;
        proof(cookie, b"client", &client_nonce, &server_nonce)
            .verify_slice(&client_proof)
            .map_err(|_| refused("the peer does not know the cluster cookie"))
    };
    within(timeout, exchange).await
}

/// Appends one frame (length prefix and payload parts) to `out`.
pub fn put_frame(out: &mut Vec<u8>, id: u64, role: Option<Role>, body: &[u8]) {
    let len = 8 + usize::from(role.is_some()) + body.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    if let Some(role) = role {
        out.push(role as u8);
    }
    out.extend_from_slice(body);
}

/// Reads one frame's payload; `None` at a clean end of stream. A frame longer than `max` is an
/// error (the connection is then dropped: framing is lost).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let len = match reader.read_u32().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {max}"),
        ));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

/// A request payload: its id, its role and the JSON body; `None` when malformed.
pub fn parse_request(payload: &[u8]) -> Option<(u64, Role, &[u8])> {
    let (id, rest) = payload.split_first_chunk::<8>()?;
    let (&role, body) = rest.split_first()?;
    let role = *Role::ALL.get(role as usize)?;
    Some((u64::from_be_bytes(*id), role, body))
}

/// A reply payload: its id and the JSON body; `None` when malformed.
pub fn parse_reply(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (id, body) = payload.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*id), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_cookie_authenticates_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let t = Duration::from_secs(1);
        let (client, server) = tokio::join!(
            handshake_client(&mut a, "secret", t),
            handshake_server(&mut b, "secret", t)
        );
        client.expect("client side");
        server.expect("server side");
    }

    #[tokio::test]
    async fn a_different_cookie_is_refused_by_the_client_first() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let t = Duration::from_secs(1);
        let (client, server) = tokio::join!(handshake_client(&mut a, "secret", t), async {
            let result = handshake_server(&mut b, "other", t).await;
            drop(b);
            result
        });
        let client = client.expect_err("the server's proof is wrong");
        assert_eq!(client.kind(), io::ErrorKind::PermissionDenied);
        // The client hung up without proving anything.
        assert!(server.is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_refused() {
        let mut out = Vec::new();
        put_frame(&mut out, 7, Some(Role::Store), b"{\"a\":1}");
        put_frame(&mut out, 8, None, b"[]");
        let mut reader = out.as_slice();
        let request = read_frame(&mut reader, 1024)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(
            parse_request(&request),
            Some((7, Role::Store, &b"{\"a\":1}"[..]))
        );
        let reply = read_frame(&mut reader, 1024)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(parse_reply(&reply), Some((8, &b"[]"[..])));
        assert!(read_frame(&mut reader, 1024).await.expect("end").is_none());
        assert_eq!(
            parse_request(&[0, 0, 0, 0, 0, 0, 0, 1, 200]),
            None,
            "no such role"
        );
        assert_eq!(parse_request(&[1, 2]), None, "too short");
        let mut big = Vec::new();
        put_frame(&mut big, 1, None, &[0; 100]);
        assert!(read_frame(&mut big.as_slice(), 50).await.is_err());
    }
}
