//! Free TCP ports on 127.0.0.1, never 6379, never the same one twice within
//! a process.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::Mutex;

/// The port of a system-wide Redis; never handed out.
const DEFAULT_REDIS_PORT: u16 = 6379;
/// Offset of the Redis Cluster bus port from the client port.
const CLUSTER_BUS_OFFSET: u16 = 10000;
/// Cluster node ports stay below this so that `port + 10000` is a valid port.
pub(crate) const CLUSTER_PORT_LIMIT: u16 = 55000;

/// Ports already handed out by this process, so that parallel tests in one
/// test binary never get the same port twice.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Records `port` as handed out; false if it was handed out before.
fn claim(port: u16) -> bool {
    HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(port)
}

/// `127.0.0.1:port`.
pub(crate) fn localhost(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(localhost(port)).is_ok()
}

/// Asks the kernel for an unused port on 127.0.0.1.
fn kernel_port() -> Option<u16> {
    let listener = TcpListener::bind(localhost(0)).ok()?;
    let port = listener.local_addr().ok()?.port();
    Some(port)
}

/// A cheap pseudo-random number without extra dependencies.
pub(crate) fn pseudo_random() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    hasher.finish()
}

/// Returns a free TCP port on 127.0.0.1 (never 6379).
///
/// The port is found by binding port 0 and reading the port the kernel chose;
/// the socket is closed again before returning, so another process may grab
/// the port before it is used. [`RedisServer::start`](crate::RedisServer::start)
/// copes with that by retrying on another port. Within one process the same
/// port is never returned twice.
///
/// ```
/// let port = ostq_testkit::free_port();
/// assert_ne!(port, 6379);
/// assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
/// ```
pub fn free_port() -> u16 {
    free_port_where(|port| port != DEFAULT_REDIS_PORT && port != 0)
}

/// A free port below 55000 whose cluster bus port (`port + 10000`) is free too.
pub(crate) fn free_cluster_port() -> u16 {
    free_port_where(|port| {
        port != 0
            && port != DEFAULT_REDIS_PORT
            && port < CLUSTER_PORT_LIMIT
            && port + CLUSTER_BUS_OFFSET != DEFAULT_REDIS_PORT
            && bindable(port + CLUSTER_BUS_OFFSET)
    })
}

/// A port that is bindable right now, satisfies `ok`, and was not handed out
/// by this process before.
fn free_port_where(ok: impl Fn(u16) -> bool) -> u16 {
    // Usually the kernel's choice (from the ephemeral range) works.
    for _ in 0..500 {
        if let Some(port) = kernel_port() {
            if ok(port) && claim(port) {
                return port;
            }
        }
    }
    // Odd ephemeral port range: scan from a random point below 55000.
    const LOW: u16 = 20000;
    let span = u64::from(CLUSTER_PORT_LIMIT - LOW);
    let start = pseudo_random() % span;
    for step in 0..span {
        let port = LOW + u16::try_from((start + step) % span).unwrap_or(0);
        if ok(port) && bindable(port) && claim(port) {
            return port;
        }
    }
    // Everything is taken; let the caller fail on this one.
    LOW
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_and_not_6379() {
        for _ in 0..50 {
            let port = free_port();
            assert_ne!(port, 6379);
            assert_ne!(port, 0);
            assert!(bindable(port));
        }
    }

    #[test]
    fn free_ports_are_not_repeated_within_the_process() {
        let ports: BTreeSet<u16> = (0..100).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 100);
    }

    #[test]
    fn cluster_ports_leave_room_for_the_bus_port() {
        for _ in 0..50 {
            let port = free_cluster_port();
            assert!(port < CLUSTER_PORT_LIMIT);
            assert!(bindable(port + CLUSTER_BUS_OFFSET));
        }
    }
}
