//! The Lua scripts, one per state transition, each in its own file under `lua/` with a header
//! naming its KEYS and ARGV. Helpers shared by several scripts live in `lua/lib/` and are pasted
//! in at build time where a script says `-- @include lib/NAME.lua` (see `build.rs`), so each
//! constant here is one self-contained text that `EVAL` or `SCRIPT LOAD` accepts. They are
//! public so other languages can load them (`ostq script NAME` prints one).

/// Source of `push.lua`: enqueue jobs given as plain fields (the script other languages use).
pub const PUSH: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/push.lua"));
/// Source of `fetch.lua`: lease ready jobs; promote due jobs; recover expired leases; trim.
pub const FETCH: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/fetch.lua"));
/// Source of `claim.lua`: make an idle worker's staged lease group, woken with a job, an ordinary one.
pub const CLAIM: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/claim.lua"));
/// Source of `complete.lua`: end leases of jobs that succeeded.
pub const COMPLETE: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/complete.lua"));
/// Source of `fail.lua`: move failed jobs to retry or dead.
pub const FAIL: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/fail.lua"));
/// Source of `renew.lua`: extend held leases, report lost ones.
pub const RENEW: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/renew.lua"));
/// Source of `requeue.lua`: give unfinished jobs back at shutdown.
pub const REQUEUE: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/requeue.lua"));
/// Source of `enqueue_now.lua`: move scheduled, retry or dead jobs to pending now.
pub const ENQUEUE_NOW: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/enqueue_now.lua"));
/// Source of `delete.lua`: remove scheduled, retry, dead or completed jobs by id.
pub const DELETE: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/delete.lua"));
/// Source of `progress.lua`: record a running job's progress and emit it.
pub const PROGRESS: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/progress.lua"));
/// Source of `delete_pending.lua`: remove one pending job by its envelope.
pub const DELETE_PENDING: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/delete_pending.lua"));
/// Source of `cron_register.lua`: record a schedule in its queue's registry.
pub const CRON_REGISTER: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/cron_register.lua"));
/// Source of `cron_fire.lua`: enqueue a schedule tick's job, exactly once across processes.
pub const CRON_FIRE: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/cron_fire.lua"));
/// Source of `cron_remove.lua`: remove a schedule and its state.
pub const CRON_REMOVE: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/cron_remove.lua"));

/// Source of `history.lua`: add an outcome batch's figures to the per-minute and per-hour history.
pub const HISTORY: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/history.lua"));

/// Source of `wait.lua`: read a tracked job's outcome and ask for its done token if unfinished.
pub const WAIT: &str = include_str!(concat!(env!("OUT_DIR"), "/lua/wait.lua"));
/// Every script by its file name without `.lua` (`"push"`, `"fetch"`, ...), assembled.
pub const ALL: &[(&str, &str)] = &[
    ("push", PUSH),
    ("fetch", FETCH),
    ("claim", CLAIM),
    ("complete", COMPLETE),
    ("fail", FAIL),
    ("renew", RENEW),
    ("requeue", REQUEUE),
    ("enqueue_now", ENQUEUE_NOW),
    ("delete", DELETE),
    ("delete_pending", DELETE_PENDING),
    ("progress", PROGRESS),
    ("history", HISTORY),
    ("wait", WAIT),
    ("cron_register", CRON_REGISTER),
    ("cron_fire", CRON_FIRE),
    ("cron_remove", CRON_REMOVE),
];
