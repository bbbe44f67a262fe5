//! Test harness for ostq: private, throw-away `redis-server` processes.
//!
//! Every [`RedisServer`] runs in its own temporary directory on a free
//! `127.0.0.1` port (never 6379), so tests can run in parallel and leave
//! nothing behind: the process is killed and the directory removed when the
//! value is dropped. [`RedisCluster`] builds a small Redis Cluster out of such
//! servers, [`RedisSentinel`] watches one, [`Proxy`] puts faults between a
//! client and one, [`TestCerts`] makes certificates for TLS, and [`Resp`]
//! sends commands to one by hand. `ostq demo`, `ostq bench` and the chaos
//! suite start their private servers with [`RedisServer::builder`] too.
//!
//! | module | what |
//! |---|---|
//! | `server` | [`RedisServer`], [`RedisServerBuilder`] |
//! | `cluster` | [`RedisCluster`] |
//! | `sentinel` | [`RedisSentinel`] |
//! | `proxy` | [`Proxy`], the fault proxy |
//! | `tls` | [`TestCerts`] |
//! | `resp` | [`Resp`] and [`Reply`], a small blocking RESP client |
//! | `ports` | [`free_port`] |
//! | `workspace` | [`workspace_bin`] |
//!
//! `redis-server` and `redis-cli` must be on `PATH` (`scripts/test` installs
//! them with `apt-get install redis-server` when they are missing).
//!
//! ```
//! use ostq_testkit::RedisServer;
//!
//! # fn main() -> anyhow::Result<()> {
//! let redis = RedisServer::start()?;
//! redis.cli(&["SET", "greeting", "hello"])?;
//! assert_eq!(redis.cli(&["GET", "greeting"])?, "hello");
//! // `redis.url()` is what a client connects to, e.g. "redis://127.0.0.1:41234".
//! assert!(redis.url().starts_with("redis://127.0.0.1:"));
//! # Ok(())
//! # }
//! ```

mod cluster;
mod ports;
mod proxy;
mod resp;
mod sentinel;
mod server;
mod tls;
mod workspace;

pub use cluster::RedisCluster;
pub use ports::free_port;
pub use proxy::Proxy;
pub use resp::{Reply, Resp};
pub use sentinel::RedisSentinel;
pub use server::{RedisServer, RedisServerBuilder};
pub use tls::TestCerts;
pub use workspace::workspace_bin;
