//! `ostq-chaos`: ostq's chaos suite.
//!
//! `ostq-chaos run` starts a private `redis-server` (AOF on, `appendfsync everysec`), pushes good
//! jobs (a few long ones among many short ones) and malformed entries, runs worker processes (this
//! same binary, `ostq-chaos worker`), each behind a TCP proxy of its own that adds latency, and
//! while they work it SIGKILLs a random worker every 2 s, drops a random worker's connections
//! every 3 s and stalls one every 5 s (at the proxy), kills every client connection once, stalls
//! Redis for 2 s once and restarts Redis once. Each worker appends a line to its own execution log
//! (outside Redis) whenever it completes a job. At the end the suite checks that every good job
//! completed at least once, that every malformed entry is in the dead set with a reason, and that
//! every duplicate execution is explained by a kill, a fault or a retried push. Its last line on
//! stdout is one JSON object with the figures; it exits 0 only when nothing was lost, every
//! malformed entry is accounted for and no duplicate is unexplained.
//!
//! `docs/reliability.md` explains the guarantees and quotes the figures; `scripts/chaos` builds and
//! runs this binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod bad;
mod execlog;
mod procs;
mod run;
mod worker;

/// The queue every chaos run uses (in its own private Redis).
pub(crate) const QUEUE: &str = "chaos";

#[derive(Parser)]
#[command(
    name = "ostq-chaos",
    about = "ostq's chaos suite: kills workers, cuts connections, stalls and restarts Redis, and proves no job is lost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole suite against a private redis-server; the last stdout line is a JSON summary.
    Run(run::RunArgs),
    /// One worker process (started by `run`; exits when its stdin closes or on SIGTERM).
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Multi-threaded (with I/O and timers): `run` blocks a thread to restart Redis.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ostq-chaos: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match cli.command {
        Command::Run(args) => match runtime.block_on(run::run(args)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("ostq-chaos: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Worker(args) => match runtime.block_on(worker::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ostq-chaos worker: {e:#}");
                ExitCode::FAILURE
            }
        },
    };
    // A worker may still be blocked reading stdin on a blocking thread: do not wait for it.
    runtime.shutdown_background();
    code
}
