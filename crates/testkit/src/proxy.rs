//! A TCP fault proxy: sits between clients and a Redis server on
//! `127.0.0.1` and adds latency, stalls, and connection drops on demand.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The most bytes read (and then delivered) as one chunk.
const CHUNK: usize = 64 * 1024;
/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest single wait of a writer, so that it re-checks its flags even if a
/// wake-up were missed.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// A TCP proxy on a free `127.0.0.1` port that forwards every connection to
/// `127.0.0.1:<upstream_port>`, with faults on demand: latency with jitter
/// ([`Proxy::set_latency`]), stalls ([`Proxy::set_stalled`]) and connection
/// drops ([`Proxy::drop_connections`]).
///
/// Each connection direction has a reader thread, which reads chunks of up
/// to 64 KiB and stamps each with the moment it is due, and a writer thread,
/// which delivers them in order once due (and not stalled). Latency is thus a
/// delay, not a throughput cap: any number of chunks can be in flight.
/// Dropping the proxy stops the listener and closes every connection; all
/// its threads end before `drop` returns.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use std::time::Duration;
/// let redis = ostq_testkit::RedisServer::start()?;
/// let proxy = ostq_testkit::Proxy::start(redis.port())?;
/// proxy.set_latency(Duration::from_millis(2), Duration::from_millis(1));
/// // connect clients to proxy.url() ...
/// proxy.set_stalled(true); // replies are held ...
/// proxy.set_stalled(false); // ... and delivered now
/// proxy.drop_connections(); // clients see their connections closed
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    one_way_ns: AtomicU64,
    jitter_ns: AtomicU64,
    /// Whether forwarding is stalled; writers wait on `wake`.
    stalled: Mutex<bool>,
    /// Notified when `stalled` changes, connections are dropped, or the proxy stops.
    wake: Condvar,
    accepted: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Threads of connections, joined when the proxy is dropped.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    closed: AtomicBool,
    /// Directions still running; the last one out unregisters the connection.
    live: AtomicU64,
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to
    /// 127.0.0.1:upstream_port.
    pub fn start(upstream_port: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the proxy's port")?;
        let port = listener
            .local_addr()
            .context("reading the proxy's port")?
            .port();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-{port}-accept"))
                .spawn(move || accept_loop(&listener, upstream_port, &shared))
                .context("spawning the proxy's accept thread")?
        };
        Ok(Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Each chunk of bytes, in each direction, is delivered `one_way` plus a
    /// uniform random `0..=jitter` later; order within a connection direction
    /// is preserved (bytes are never reordered). Applies to chunks read after
    /// the call.
    pub fn set_latency(&self, one_way: Duration, jitter: Duration) {
        self.shared
            .one_way_ns
            .store(nanos(one_way), Ordering::SeqCst);
        self.shared.jitter_ns.store(nanos(jitter), Ordering::SeqCst);
    }

    /// Closes every connection open now (both sides); new connections are
    /// accepted as usual.
    pub fn drop_connections(&self) {
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).drain().map(|(_, c)| c).collect();
        for conn in &conns {
            conn.close();
        }
        // Wake writers holding chunks so that they notice at once.
        let _guard = lock(&self.shared.stalled);
        self.shared.wake.notify_all();
    }

    /// While stalled, no bytes are forwarded in either direction (they are
    /// held and delivered, in order, when unstalled); connections stay open.
    pub fn set_stalled(&self, stalled: bool) {
        *lock(&self.shared.stalled) = stalled;
        self.shared.wake.notify_all();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.drop_connections();
        {
            let _guard = lock(&self.shared.stalled);
            self.shared.wake.notify_all();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for handle in threads {
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream_port: u16, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else {
            // Out of file descriptors and the like: try again shortly.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let upstream = match TcpStream::connect_timeout(
            &crate::ports::localhost(upstream_port),
            CONNECT_TIMEOUT,
        ) {
            Ok(upstream) => upstream,
            Err(_) => {
                // As if the upstream refused: the client sees its connection closed.
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = serve(client, upstream, next_id, shared) {
            eprintln!("proxy on upstream port {upstream_port}: {error:#}");
        }
        next_id += 1;
        // Forget the threads of connections that are over.
        lock(&shared.threads).retain(|handle| !handle.is_finished());
    }
}

/// Starts the four threads of one connection.
fn serve(
    client: TcpStream,
    upstream: TcpStream,
    id: u64,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        upstream,
        closed: AtomicBool::new(false),
        live: AtomicU64::new(2),
    });
    let mut conns = lock(&shared.conns);
    if shared.stop.load(Ordering::SeqCst) {
        conn.close();
        return Ok(());
    }
    conns.insert(id, Arc::clone(&conn));
    drop(conns);
    let mut handles = Vec::with_capacity(4);
    for to_upstream in [true, false] {
        let (from, to) = if to_upstream {
            (&conn.client, &conn.upstream)
        } else {
            (&conn.upstream, &conn.client)
        };
        let (from, to) = match (from.try_clone(), to.try_clone()) {
            (Ok(from), Ok(to)) => (from, to),
            (Err(error), _) | (_, Err(error)) => {
                conn.close();
                lock(&shared.conns).remove(&id);
                return Err(error).context("cloning a socket");
            }
        };
        let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
        let reader = {
            let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
            thread::Builder::new()
                .name(format!("proxy-read-{id}"))
                .spawn(move || read_loop(from, &sender, &shared, &conn))
                .context("spawning a proxy thread")?
        };
        let writer = {
            let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
            thread::Builder::new()
                .name(format!("proxy-write-{id}"))
                .spawn(move || {
                    write_loop(to, &receiver, &shared, &conn);
                    if conn.live.fetch_sub(1, Ordering::SeqCst) == 1 {
                        // Both directions are over.
                        conn.close();
                        lock(&shared.conns).remove(&id);
                    }
                })
                .context("spawning a proxy thread")?
        };
        handles.push(reader);
        handles.push(writer);
    }
    lock(&shared.threads).extend(handles);
    Ok(())
}

/// Reads chunks and hands them to the writer with the moment each is due.
fn read_loop(
    mut from: TcpStream,
    sender: &mpsc::Sender<(Instant, Vec<u8>)>,
    shared: &Shared,
    conn: &Conn,
) {
    let mut rng = XorShift::new();
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return, // EOF: the writer delivers what it holds, then half-closes.
            Ok(n) => {
                let one_way = shared.one_way_ns.load(Ordering::SeqCst);
                let jitter = shared.jitter_ns.load(Ordering::SeqCst);
                let extra = if jitter == 0 {
                    0
                } else {
                    rng.next() % jitter.saturating_add(1)
                };
                let due = Instant::now() + Duration::from_nanos(one_way.saturating_add(extra));
                // Never earlier than the chunk before it.
                last_due = last_due.max(due);
                if sender.send((last_due, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                conn.close();
                return;
            }
        }
    }
}

/// Delivers chunks in order once they are due and forwarding is not stalled.
fn write_loop(
    mut to: TcpStream,
    receiver: &mpsc::Receiver<(Instant, Vec<u8>)>,
    shared: &Shared,
    conn: &Conn,
) {
    let over = || shared.stop.load(Ordering::SeqCst) || conn.closed.load(Ordering::SeqCst);
    loop {
        // Wake up now and then to notice a dropped connection even when idle.
        let (due, bytes) = match receiver.recv_timeout(MAX_WAIT) {
            Ok(chunk) => chunk,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if over() {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The source reached EOF and everything was delivered.
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        };
        let mut stalled = lock(&shared.stalled);
        loop {
            if over() {
                return;
            }
            let now = Instant::now();
            let wait = if *stalled {
                MAX_WAIT
            } else if now < due {
                (due - now).min(MAX_WAIT)
            } else {
                break;
            };
            stalled = shared
                .wake
                .wait_timeout(stalled, wait)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        drop(stalled);
        if to.write_all(&bytes).is_err() {
            conn.close();
            return;
        }
    }
}

/// A tiny xorshift generator, enough for jitter.
struct XorShift(u64);

impl XorShift {
    fn new() -> XorShift {
        XorShift(crate::ports::pseudo_random() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{RedisServer, Reply, Resp};

    /// A connection with a long read timeout, so that a test fails instead
    /// of hanging but slow replies still arrive.
    fn connect(port: u16) -> Resp {
        let mut client = Resp::connect(port).unwrap();
        client.set_timeout(Duration::from_secs(10)).unwrap();
        client
    }

    fn status(text: &str) -> Reply {
        Reply::Status(text.to_owned())
    }

    #[test]
    fn forwards_commands() {
        let redis = RedisServer::start().unwrap();
        let proxy = Proxy::start(redis.port()).unwrap();
        assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
        let mut client = connect(proxy.port());
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
        assert_eq!(client.command(&["SET", "k", "v"]).unwrap(), status("OK"));
        assert_eq!(redis.cli(&["GET", "k"]).unwrap(), "v");
        // A large value crosses in several chunks, in order.
        let big: String = (0..300_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        proxy.set_latency(Duration::from_millis(1), Duration::from_millis(3));
        assert_eq!(client.command(&["SET", "big", &big]).unwrap(), status("OK"));
        assert_eq!(
            client.command(&["GET", "big"]).unwrap(),
            Reply::Bulk(big.into_bytes())
        );
        let _second = connect(proxy.port()).command(&["PING"]).unwrap();
        assert_eq!(proxy.connections(), 2);
    }

    #[test]
    fn latency_delays_each_direction() {
        let redis = RedisServer::start().unwrap();
        let proxy = Proxy::start(redis.port()).unwrap();
        let mut client = connect(proxy.port());
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
        proxy.set_latency(Duration::from_millis(20), Duration::ZERO);
        let started = Instant::now();
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
        let round_trip = started.elapsed();
        assert!(round_trip >= Duration::from_millis(40), "{round_trip:?}");
        assert!(round_trip < Duration::from_secs(2), "{round_trip:?}");

        // A delay, not a throughput cap: 50 pipelined commands take about one
        // round trip, not 50.
        let started = Instant::now();
        for _ in 0..50 {
            client.send(&["PING"]).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..50 {
            assert_eq!(client.reply().unwrap(), status("PONG"));
        }
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(800), "{elapsed:?}");

        proxy.set_latency(Duration::ZERO, Duration::ZERO);
        let started = Instant::now();
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
        assert!(started.elapsed() < Duration::from_millis(40));
    }

    #[test]
    fn jitter_keeps_order() {
        let redis = RedisServer::start().unwrap();
        let proxy = Proxy::start(redis.port()).unwrap();
        proxy.set_latency(Duration::from_millis(1), Duration::from_millis(5));
        let mut client = connect(proxy.port());
        for i in 0..200 {
            client.send(&["ECHO", &format!("m{i}")]).unwrap();
        }
        for i in 0..200 {
            assert_eq!(
                client.reply().unwrap(),
                Reply::Bulk(format!("m{i}").into_bytes())
            );
        }
    }

    #[test]
    fn drop_connections_closes_open_connections() {
        let redis = RedisServer::start().unwrap();
        let proxy = Proxy::start(redis.port()).unwrap();
        let mut client = connect(proxy.port());
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
        proxy.drop_connections();
        // The write may still succeed locally; the reply cannot come.
        let result = client.command(&["PING"]);
        assert!(result.is_err(), "{result:?}");
        // New connections work.
        let mut client = connect(proxy.port());
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
        assert_eq!(proxy.connections(), 2);
    }

    #[test]
    fn drop_connections_while_stalled_and_delayed() {
        let redis = RedisServer::start().unwrap();
        let proxy = Proxy::start(redis.port()).unwrap();
        proxy.set_latency(Duration::from_secs(30), Duration::ZERO);
        let mut client = connect(proxy.port());
        client.send(&["PING"]).unwrap();
        thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        proxy.drop_connections();
        assert!(client.reply().is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn stall_holds_bytes_until_unstalled() {
        let redis = RedisServer::start().unwrap();
        let proxy = Proxy::start(redis.port()).unwrap();
        let mut client = connect(proxy.port());
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
        proxy.set_stalled(true);
        client.send(&["INCR", "n"]).unwrap();
        client.send(&["INCR", "n"]).unwrap();
        client.set_timeout(Duration::from_millis(300)).unwrap();
        let held = client.reply();
        assert!(
            held.is_err(),
            "a reply came through a stalled proxy: {held:?}"
        );
        // Held in both directions: the commands did not reach Redis either.
        assert_eq!(redis.cli(&["GET", "n"]).unwrap(), "");
        proxy.set_stalled(false);
        client.set_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(client.reply().unwrap(), Reply::Integer(1));
        assert_eq!(client.reply().unwrap(), Reply::Integer(2));
        assert_eq!(client.command(&["PING"]).unwrap(), status("PONG"));
    }

    #[test]
    fn drop_ends_every_thread() {
        let redis = RedisServer::start().unwrap();
        let proxy = Proxy::start(redis.port()).unwrap();
        proxy.set_stalled(true);
        let mut clients: Vec<Resp> = (0..5).map(|_| connect(proxy.port())).collect();
        for client in &mut clients {
            client.send(&["PING"]).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.connections() < 5 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let shared = Arc::clone(&proxy.shared);
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(lock(&shared.threads).is_empty());
        assert!(lock(&shared.conns).is_empty());
        for client in &mut clients {
            assert!(client.reply().is_err());
        }
    }
}
