//! A TCP fault proxy: test machinery for `gorgon chaos`.
//!
//! `gorgon chaos` runs a whole cluster on loopback and injects faults. For network faults it puts a
//! [`FaultProxy`] between the Gorgon nodes and Redis / PostgreSQL: the nodes connect to the proxy's
//! port ([`FaultProxy::addr`]) and the proxy forwards every connection to the real server. A
//! [`Mode`] set with [`FaultProxy::set`] takes effect at once, on open connections too: added
//! latency, dropped connections, or a one-way black hole (a partition). [`FaultProxy::retarget`]
//! points new connections at another server and cuts the open ones, which is what a PostgreSQL
//! failover behind a virtual IP looks like to a client.
//!
//! It is not a production component: it listens on 127.0.0.1 only and refuses to forward to a
//! target that is not a loopback address. It is bounded: at most
//! [`ProxyOptions::max_connections`] connections at a time (further ones are closed at once), and
//! each direction of a connection holds at most [`QUEUE_CHUNKS`] chunks of
//! [`ProxyOptions::chunk_size`] bytes in flight.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::debug;

/// How many chunks one direction of a connection may hold between reading and writing them (the
/// delay line of [`Mode::Latency`]).
pub const QUEUE_CHUNKS: usize = 16;

/// What the proxy does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Forward everything as it comes.
    #[default]
    Pass,
    /// Every chunk forwarded in either direction waits this long first (added latency): a chunk
    /// read at `t` is written at `t + latency`, in order, so a round trip gains twice the latency.
    /// Changing the mode re-times the chunks already waiting.
    Latency(Duration),
    /// Dropped connections: every open connection is reset now (both the client's and the
    /// server's side), and new connections are accepted and reset at once.
    Drop,
    /// A one-way black hole (a partition): bytes from clients to the server are held, not
    /// forwarded; connections stay open and, the server hearing nothing, replies stop. New
    /// connections are accepted and connected upstream, but nothing flows from client to server.
    /// Server-to-client bytes still pass. When the black hole ends the held bytes flow, in order,
    /// as TCP's retransmissions deliver them when a real partition heals (TCP never loses bytes
    /// from the middle of a stream that stays open: dropping them would make a fault no network
    /// makes). Past the bounded delay line the proxy stops reading, and the kernel's buffers
    /// push back on the client.
    BlackHole,
}

/// Knobs of [`FaultProxy::start_with`].
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The port to listen on, on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Connections open at once; further ones are accepted and closed at once.
    pub max_connections: usize,
    /// The largest chunk read (and forwarded) at a time, in bytes.
    pub chunk_size: usize,
    /// How long a new connection waits for the target to accept before it is closed.
    pub connect_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            port: 0,
            max_connections: 1024,
            chunk_size: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of a [`FaultProxy`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients (including those closed at once).
    pub accepted: u64,
    /// Connections closed at once: [`Mode::Drop`] was on, or the connection cap was reached.
    pub rejected: u64,
    /// Connections closed because the target could not be reached.
    pub failed: u64,
    /// Open connections cut by the proxy: [`Mode::Drop`], [`FaultProxy::retarget`] or shutdown.
    pub cut: u64,
    /// Connections open now.
    pub active: u64,
    /// Bytes forwarded from clients to the server.
    pub bytes_to_server: u64,
    /// Bytes forwarded from the server to clients.
    pub bytes_to_client: u64,
    /// Bytes from clients that waited in a [`Mode::BlackHole`].
    pub held: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    cut: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
    held: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What the listener and the connection tasks share.
struct Shared {
    name: String,
    mode: watch::Sender<Mode>,
    target: watch::Sender<SocketAddr>,
    counters: Counters,
    limit: Arc<Semaphore>,
    max_connections: usize,
    chunk_size: usize,
    connect_timeout: Duration,
}

/// A TCP proxy on 127.0.0.1 that forwards every connection to a loopback target and injects the
/// faults of its current [`Mode`].
///
/// Cheap to clone: clones control the same proxy. When the last clone is dropped the proxy stops
/// as if [`FaultProxy::shutdown`] had been called (without waiting for it).
#[derive(Clone)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    _stop_on_drop: Arc<DropGuard>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("target", &self.target())
            .field("mode", &self.mode())
            .finish()
    }
}

impl FaultProxy {
    /// Binds 127.0.0.1 on a free port and forwards every connection to `target`, which must be a
    /// loopback address. `name` labels the log lines.
    pub async fn start(name: &str, target: SocketAddr) -> io::Result<FaultProxy> {
        Self::start_with(name, target, ProxyOptions::default()).await
    }

    /// [`FaultProxy::start`] with a chosen port, connection cap, chunk size and connect timeout.
    pub async fn start_with(
        name: &str,
        target: SocketAddr,
        options: ProxyOptions,
    ) -> io::Result<FaultProxy> {
        ensure_loopback(target)?;
        if options.max_connections == 0 || options.chunk_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fault proxy: max_connections and chunk_size must be above zero",
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, options.port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            mode: watch::Sender::new(Mode::Pass),
            target: watch::Sender::new(target),
            counters: Counters::default(),
            limit: Arc::new(Semaphore::new(options.max_connections)),
            max_connections: options.max_connections,
            chunk_size: options.chunk_size,
            connect_timeout: options.connect_timeout,
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            shared.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        debug!(proxy = %name, %addr, %target, "fault proxy listening");
        Ok(FaultProxy {
            shared,
            addr,
            _stop_on_drop: Arc::new(cancel.clone().drop_guard()),
            cancel,
            tracker,
        })
    }

    /// The proxy's name, as given to [`FaultProxy::start`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        *self.shared.target.borrow()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Switches the mode; it takes effect at once, on open connections too.
    pub fn set(&self, mode: Mode) {
        let old = self.shared.mode.send_replace(mode);
        debug!(proxy = %self.shared.name, ?old, new = ?mode, "fault proxy mode");
    }

    /// Sends new connections to `target` (the proxy acts as a virtual IP in front of a failed-over
    /// server) and cuts every open connection. Refuses a target that is not a loopback address.
    pub fn retarget(&self, target: SocketAddr) -> io::Result<()> {
        ensure_loopback(target)?;
        let old = self.shared.target.send_replace(target);
        debug!(proxy = %self.shared.name, %old, new = %target, "fault proxy retargeted");
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let free = self.shared.limit.available_permits();
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            cut: c.cut.load(Ordering::Relaxed),
            active: self.shared.max_connections.saturating_sub(free) as u64,
            bytes_to_server: c.bytes_to_server.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, resets every open connection and waits until all of the proxy's tasks
    /// have ended (the port is closed when this returns). Stops the clones too.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        debug!(proxy = %self.shared.name, "fault proxy stopped");
    }
}

/// Refuses anything but a loopback address: the proxy is test machinery.
fn ensure_loopback(target: SocketAddr) -> io::Result<()> {
    if target.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fault proxy forwards to loopback addresses only, not {target}"),
        ))
    }
}

/// Closes a connection with a reset (`SO_LINGER` 0), as a dropped connection looks to its peer.
fn abort(stream: TcpStream, name: &str) {
    if let Err(e) = stream.set_zero_linger() {
        debug!(proxy = %name, error = %e, "fault proxy: cannot set SO_LINGER 0, closing instead");
    }
    drop(stream);
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    debug!(proxy = %shared.name, error = %e, "fault proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        bump(&shared.counters.accepted, 1);
        if *shared.mode.borrow() == Mode::Drop {
            bump(&shared.counters.rejected, 1);
            debug!(proxy = %shared.name, %peer, "fault proxy: dropping new connection");
            abort(stream, &shared.name);
            continue;
        }
        let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
            bump(&shared.counters.rejected, 1);
            debug!(
                proxy = %shared.name,
                %peer,
                max = shared.max_connections,
                "fault proxy: too many connections, closing new one"
            );
            abort(stream, &shared.name);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(proxy = %shared.name, error = %e, "fault proxy: cannot set TCP_NODELAY");
        }
        tracker.spawn(serve(stream, peer, shared.clone(), cancel.clone(), permit));
    }
    debug!(proxy = %shared.name, "fault proxy: stopped accepting");
}

/// Why an open connection ended.
enum Outcome {
    /// Both directions reached end of stream.
    Closed,
    /// A read or write failed (the peer reset, say).
    Failed(io::Error),
    /// The proxy cut it.
    Cut(&'static str),
}

/// Resolves when the proxy must cut open connections: [`Mode::Drop`] or a new target.
async fn cut_signal(
    mode: &mut watch::Receiver<Mode>,
    target: &mut watch::Receiver<SocketAddr>,
) -> &'static str {
    tokio::select! {
        () = wait_for_mode(mode, |m| m == Mode::Drop) => "drop",
        _ = target.changed() => "retarget",
    }
}

/// Waits until the mode satisfies `f` (at once if it does already).
async fn wait_for_mode(rx: &mut watch::Receiver<Mode>, f: impl Fn(Mode) -> bool) {
    // The senders live in `Shared`, which every task holds: the channel cannot close.
    let _ = rx.wait_for(|m| f(*m)).await;
}

/// One client connection: connects to the target, then pumps both directions until they end or
/// the proxy cuts the connection.
async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let name = shared.name.as_str();
    let mut mode = shared.mode.subscribe();
    let mut target_rx = shared.target.subscribe();
    let target = *target_rx.borrow_and_update();

    let connect = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(target));
    let mut server = tokio::select! {
        biased;
        () = cancel.cancelled() => {
            bump(&shared.counters.cut, 1);
            abort(client, name);
            return;
        }
        reason = cut_signal(&mut mode, &mut target_rx) => {
            bump(&shared.counters.cut, 1);
            debug!(proxy = %name, %peer, reason, "fault proxy: cut while connecting");
            abort(client, name);
            return;
        }
        connected = connect => match connected {
            Ok(Ok(server)) => server,
            Ok(Err(e)) => {
                bump(&shared.counters.failed, 1);
                debug!(proxy = %name, %peer, %target, error = %e, "fault proxy: cannot reach target");
                abort(client, name);
                return;
            }
            Err(_) => {
                bump(&shared.counters.failed, 1);
                debug!(proxy = %name, %peer, %target, "fault proxy: target did not accept in time");
                abort(client, name);
                return;
            }
        },
    };
    if let Err(e) = server.set_nodelay(true) {
        debug!(proxy = %name, error = %e, "fault proxy: cannot set TCP_NODELAY upstream");
    }

    let mut client = client;
    let outcome = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let flow = async {
            tokio::try_join!(
                pump(client_read, server_write, Direction::ToServer, &shared),
                pump(server_read, client_write, Direction::ToClient, &shared),
            )
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Outcome::Cut("shutdown"),
            reason = cut_signal(&mut mode, &mut target_rx) => Outcome::Cut(reason),
            ended = flow => match ended {
                Ok(_) => Outcome::Closed,
                Err(e) => Outcome::Failed(e),
            },
        }
    };
    match outcome {
        Outcome::Closed => debug!(proxy = %name, %peer, "fault proxy: connection closed"),
        Outcome::Failed(e) => {
            debug!(proxy = %name, %peer, error = %e, "fault proxy: connection failed");
        }
        Outcome::Cut(reason) => {
            bump(&shared.counters.cut, 1);
            debug!(proxy = %name, %peer, reason, "fault proxy: connection cut");
            abort(client, name);
            abort(server, name);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// What travels through a direction's delay line.
enum Item {
    /// Bytes, with the moment they were read.
    Data(Bytes, Instant),
    /// End of stream.
    Eof,
}

/// Copies one direction of a connection through a bounded delay line: a reader that stamps each
/// chunk, a writer that holds it as long as the current mode says, then writes it or (black hole,
/// client to server) holds it until the black hole ends. An end of stream is passed on as a write shutdown.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    direction: Direction,
    shared: &Shared,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Item>(QUEUE_CHUNKS);
    let chunk_size = shared.chunk_size;
    let counters = &shared.counters;
    let mut mode = shared.mode.subscribe();

    let read = async move {
        let mut buf = vec![0u8; chunk_size];
        loop {
            let n = from.read(&mut buf).await?;
            let item = if n == 0 {
                Item::Eof
            } else {
                Item::Data(Bytes::copy_from_slice(&buf[..n]), Instant::now())
            };
            // The writer only stops early on an error, which ends the connection anyway.
            if tx.send(item).await.is_err() || n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };

    let write = async move {
        while let Some(item) = rx.recv().await {
            let black_hole = |m: Mode| direction == Direction::ToServer && m == Mode::BlackHole;
            match item {
                Item::Data(data, read_at) => {
                    hold(&mut mode, read_at).await;
                    let len = data.len() as u64;
                    if black_hole(*mode.borrow()) {
                        bump(&counters.held, len);
                        wait_for_mode(&mut mode, |m| !black_hole(m)).await;
                    }
                    to.write_all(&data).await?;
                    match direction {
                        Direction::ToServer => bump(&counters.bytes_to_server, len),
                        Direction::ToClient => bump(&counters.bytes_to_client, len),
                    }
                }
                Item::Eof => {
                    wait_for_mode(&mut mode, |m| !black_hole(m)).await;
                    to.shutdown().await?;
                    return Ok(());
                }
            }
        }
        Ok::<(), io::Error>(())
    };

    tokio::try_join!(read, write).map(|_| ())
}

/// Holds a chunk read at `read_at` until `read_at + latency` under the current mode, re-timing it
/// whenever the mode changes (back to [`Mode::Pass`] releases it at once).
async fn hold(mode: &mut watch::Receiver<Mode>, read_at: Instant) {
    loop {
        let current = *mode.borrow_and_update();
        let latency = match current {
            Mode::Latency(latency) => latency,
            Mode::Pass | Mode::Drop | Mode::BlackHole => Duration::ZERO,
        };
        match read_at.checked_add(latency) {
            Some(due) if due <= Instant::now() => return,
            Some(due) => tokio::select! {
                () = tokio::time::sleep_until(due) => return,
                changed = mode.changed() => if changed.is_err() { return },
            },
            // A latency too long to represent: wait for the mode to change.
            None => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    /// An echo server on loopback; `upper` answers in ASCII upper case, to tell two apart.
    async fn echo_server(upper: bool) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind echo server");
        let addr = listener.local_addr().expect("echo server address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if upper {
                            buf[..n].make_ascii_uppercase();
                        }
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    /// Sends `msg` and returns as many bytes of reply.
    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        stream.write_all(msg).await.expect("write");
        let mut reply = vec![0u8; msg.len()];
        timeout(WAIT, stream.read_exact(&mut reply))
            .await
            .expect("no reply within 5 s")
            .expect("read reply");
        reply
    }

    /// The peer closed or reset the connection: a read gives end of stream or an error, soon.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        match timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("expected a closed connection, read {n} bytes"),
            Err(_) => panic!("connection still open after 5 s"),
        }
    }

    /// Nothing arrives within `quiet`, and the connection is not closed either.
    async fn assert_silent(stream: &mut TcpStream, quiet: Duration) {
        let mut buf = [0u8; 64];
        match timeout(quiet, stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("connection closed, expected it open and silent"),
            Ok(Ok(n)) => panic!("expected silence, read {:?}", &buf[..n]),
            Ok(Err(e)) => panic!("connection failed, expected it open and silent: {e}"),
        }
    }

    /// Polls the proxy's counters until `ok` holds (counters are bumped after the bytes move).
    async fn wait_stats(proxy: &FaultProxy, ok: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
        let deadline = StdInstant::now() + WAIT;
        loop {
            let stats = proxy.stats();
            if ok(&stats) {
                return stats;
            }
            assert!(
                StdInstant::now() < deadline,
                "stats never got there: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn pass_echoes_in_order_across_chunks() {
        let echo = echo_server(false).await;
        let proxy = FaultProxy::start("redis", echo).await.expect("start");
        assert_eq!(proxy.addr().ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(proxy.mode(), Mode::Pass);

        let mut stream = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");

        // Many chunks' worth both ways at once: every byte arrives, in order.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = stream.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move { write.write_all(&sent).await.map(|()| write) });
        let mut echoed = vec![0u8; payload.len()];
        timeout(WAIT, read.read_exact(&mut echoed))
            .await
            .expect("echo of the payload within 5 s")
            .expect("read payload");
        assert!(echoed == payload, "payload came back altered");
        let _write = writer.await.expect("writer task").expect("write payload");

        let total = 5 + payload.len() as u64;
        let stats = wait_stats(&proxy, |s| s.bytes_to_client == total).await;
        assert_eq!(stats.bytes_to_server, total);
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.active, 1);
        assert_eq!((stats.rejected, stats.cut, stats.held), (0, 0, 0));
    }

    #[tokio::test]
    async fn end_of_stream_passes_both_ways() {
        let echo = echo_server(false).await;
        let proxy = FaultProxy::start("redis", echo).await.expect("start");
        let mut stream = connect(proxy.addr()).await;
        stream.write_all(b"bye").await.expect("write");
        stream.shutdown().await.expect("shutdown write");
        let mut rest = Vec::new();
        timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("end of stream within 5 s")
            .expect("read to end");
        assert_eq!(rest, b"bye");
        wait_stats(&proxy, |s| s.active == 0).await;
    }

    #[tokio::test]
    async fn latency_delays_each_direction_in_order_and_lifts_at_once() {
        let echo = echo_server(false).await;
        let proxy = FaultProxy::start("redis", echo).await.expect("start");
        let mut stream = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut stream, b"warm").await, b"warm");

        // On an open connection: 200 ms each way.
        proxy.set(Mode::Latency(Duration::from_millis(200)));
        let started = StdInstant::now();
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "round trip took {took:?}"
        );

        // Chunks written apart keep their order.
        let started = StdInstant::now();
        for part in [&b"one"[..], b"two", b"three"] {
            stream.write_all(part).await.expect("write part");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let mut reply = [0u8; 11];
        timeout(WAIT, stream.read_exact(&mut reply))
            .await
            .expect("reply within 5 s")
            .expect("read reply");
        assert_eq!(&reply, b"onetwothree");
        assert!(started.elapsed() >= Duration::from_millis(400));

        // Back to Pass while a chunk is held: it goes at once, not 400 ms later.
        let started = StdInstant::now();
        stream.write_all(b"late").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.set(Mode::Pass);
        let mut reply = [0u8; 4];
        timeout(WAIT, stream.read_exact(&mut reply))
            .await
            .expect("reply within 5 s")
            .expect("read reply");
        assert_eq!(&reply, b"late");
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(350),
            "held chunk took {took:?}"
        );
    }

    #[tokio::test]
    async fn drop_cuts_open_connections_and_refuses_new_ones() {
        let echo = echo_server(false).await;
        let proxy = FaultProxy::start("redis", echo).await.expect("start");
        let mut open = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut open, b"ping").await, b"ping");

        proxy.set(Mode::Drop);
        assert_closed(&mut open).await;

        // A new connection is accepted, then closed at once (or refused outright).
        if let Ok(Ok(mut fresh)) = timeout(WAIT, TcpStream::connect(proxy.addr())).await {
            assert_closed(&mut fresh).await;
        }
        wait_stats(&proxy, |s| s.cut == 1 && s.rejected >= 1 && s.active == 0).await;

        proxy.set(Mode::Pass);
        let mut again = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut again, b"back").await, b"back");
    }

    #[tokio::test]
    async fn black_hole_holds_requests_until_it_ends() {
        let echo = echo_server(false).await;
        let proxy = FaultProxy::start("redis", echo).await.expect("start");
        let mut open = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut open, b"ping").await, b"ping");

        proxy.set(Mode::BlackHole);
        open.write_all(b"lost").await.expect("write");
        assert_silent(&mut open, Duration::from_millis(300)).await;

        let mut fresh = connect(proxy.addr()).await;
        fresh.write_all(b"void").await.expect("write");
        assert_silent(&mut fresh, Duration::from_millis(300)).await;
        let stats = wait_stats(&proxy, |s| s.held == 8).await;
        assert_eq!(stats.bytes_to_server, 4);
        assert_eq!((stats.active, stats.cut), (2, 0));

        proxy.set(Mode::Pass);
        let mut after = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut after, b"back").await, b"back");
        // The held requests arrive late, in order, before what follows them.
        for (stream, held, next) in [
            (&mut open, b"lost", b"pong"),
            (&mut fresh, b"void", b"more"),
        ] {
            let mut late = [0u8; 4];
            timeout(WAIT, stream.read_exact(&mut late))
                .await
                .expect("the held bytes within 5 s")
                .expect("read");
            assert_eq!(&late, held);
            assert_eq!(round_trip(stream, next).await, next);
            assert_silent(stream, Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn retarget_cuts_open_connections_and_sends_new_ones_elsewhere() {
        let first = echo_server(false).await;
        let second = echo_server(true).await;
        let proxy = FaultProxy::start("postgres", first).await.expect("start");
        let mut open = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut open, b"abc").await, b"abc");

        proxy.retarget(second).expect("retarget");
        assert_eq!(proxy.target(), second);
        assert_closed(&mut open).await;
        let mut fresh = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut fresh, b"abc").await, b"ABC");
        wait_stats(&proxy, |s| s.cut == 1).await;

        let far: SocketAddr = "192.0.2.7:5432".parse().expect("address");
        let refused = proxy.retarget(far).expect_err("non-loopback target");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(proxy.target(), second);
    }

    #[tokio::test]
    async fn refuses_non_loopback_targets() {
        let far: SocketAddr = "10.1.2.3:6379".parse().expect("address");
        let refused = FaultProxy::start("redis", far)
            .await
            .expect_err("non-loopback target");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        for ok in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(
                ensure_loopback(ok.parse().expect("address")).is_ok(),
                "{ok}"
            );
        }
        for bad in ["0.0.0.0:1", "[::]:1", "[::ffff:10.0.0.1]:1", "8.8.8.8:53"] {
            assert!(
                ensure_loopback(bad.parse().expect("address")).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn connection_cap_closes_the_extra_ones() {
        let echo = echo_server(false).await;
        let options = ProxyOptions {
            max_connections: 1,
            ..ProxyOptions::default()
        };
        let proxy = FaultProxy::start_with("redis", echo, options)
            .await
            .expect("start");
        let mut first = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut first, b"one").await, b"one");
        let mut second = connect(proxy.addr()).await;
        assert_closed(&mut second).await;
        assert_eq!(proxy.stats().rejected, 1);

        drop(first);
        wait_stats(&proxy, |s| s.active == 0).await;
        let mut third = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut third, b"three").await, b"three");
    }

    #[tokio::test]
    async fn shutdown_closes_everything() {
        let echo = echo_server(false).await;
        let proxy = FaultProxy::start("redis", echo).await.expect("start");
        let addr = proxy.addr();
        let mut open = connect(addr).await;
        assert_eq!(round_trip(&mut open, b"ping").await, b"ping");
        let watcher = proxy.clone();

        timeout(WAIT, proxy.shutdown())
            .await
            .expect("shutdown within 5 s");
        assert_closed(&mut open).await;
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
        assert_eq!(watcher.stats().cut, 1);
        assert_eq!(watcher.stats().active, 0);
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_proxy() {
        let echo = echo_server(false).await;
        let proxy = FaultProxy::start("redis", echo).await.expect("start");
        let mut open = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut open, b"ping").await, b"ping");
        drop(proxy);
        assert_closed(&mut open).await;
    }
}
