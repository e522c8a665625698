//! The one contract of the transports between processes (Redis mailboxes, cluster links): bytes
//! in, bytes out. The bus encodes a request with the transport's codec, picks the transport (see
//! [`Bus::call`](super::Bus::call)) and decodes the reply; a transport only carries bytes to an
//! instance of the role elsewhere and brings the reply back.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::message::Codec;
use super::{Bus, Delivery, Event, Role};
use crate::error::Result;

/// A request on its way out, encoded.
pub struct Outgoing<'a> {
    pub role: Role,
    pub kind: &'static str,
    pub delivery: Delivery,
    /// Carries a secret: must not be written anywhere it would stay (a queue).
    pub secret: bool,
    pub body: &'a [u8],
    /// The bus's round-robin turn for the role, for transports that choose among instances.
    pub turn: usize,
}

pub trait Transport: Send + Sync + 'static {
    /// For metrics and logs: `redis`, `cluster`.
    fn name(&self) -> &'static str;

    fn codec(&self) -> Codec;

    /// Whether this transport keeps durable requests until a consumer takes them.
    fn durable(&self) -> bool;

    /// Whether an instance of `role` elsewhere can be reached through this transport now.
    fn reaches(&self, role: Role) -> bool;

    /// Delivers one request and waits up to `timeout` for its encoded reply
    /// (`Result<Reply, Error>` in [`Transport::codec`]).
    fn call<'a>(&'a self, out: Outgoing<'a>, timeout: Duration) -> BoxFuture<'a, Result<Vec<u8>>>;

    /// Starts handing requests for `role` that arrive through this transport to the local
    /// instances (see [`Bus::answer`]).
    fn serve(self: Arc<Self>, role: Role, bus: Bus) -> BoxFuture<'static, anyhow::Result<()>>;

    /// Sends an event to every other node, when the transport carries events.
    fn publish(&self, _event: &Event) {}
}
