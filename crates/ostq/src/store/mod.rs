//! The storage layer: the only code in ostq that issues Redis commands. Everything above it
//! (producer, worker, scheduler, admin API, events) speaks in jobs, lease groups and queues and
//! calls one typed function here per step.
//!
//! - [`connection`]: reaching Redis (single server, Sentinel, Cluster, TLS) and the client's
//!   traps worked around;
//! - `call`: the one way scripts are called (`EVALSHA`, loading the script on `NOSCRIPT`; alone,
//!   pipelined behind a blocking wait, or several in one `MULTI`);
//! - `durable`: a write and its `WAIT`/`WAITAOF` in one round trip, on a durable connection;
//! - `push`, `lease` (fetch, wait, outcomes, renewal, cancellation, progress), `queues` (counts,
//!   listings, lookups and the operator's writes), `cron`, `stream` (events and waiting for
//!   results): one file per area, one function per script or read.
//!
//! A new script goes in `lua/` with its KEYS in `keys.rs` and one function here; a new state is a
//! new key in `keys.rs` and the scripts that move jobs through it.

pub(crate) mod backup;
pub(crate) mod call;
pub mod connection;
pub(crate) mod cron;
pub(crate) mod doctor;
pub(crate) mod durable;
pub(crate) mod history;
pub(crate) mod lease;
pub(crate) mod push;
pub(crate) mod queues;
pub(crate) mod search;
pub(crate) mod server;
pub(crate) mod stream;
pub(crate) mod workers;

pub(crate) use connection::Conn;
