//! `ostq`: the command line of the ostq task queue. Push jobs, turn any program into a worker,
//! watch the queues, and operate on jobs (retry, delete, purge, pause, resume).

mod backup;
mod bench;
mod cli;
mod cron;
mod dashboard;
mod demo;
mod doctor;
mod events;
mod exec;
mod history;
mod metrics;
mod ops;
mod output;
mod push;
mod stats;
mod util;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::util::Exit;

/// The library's own log (and each job's `job` span) on stderr, only when `RUST_LOG` asks for it
/// (`RUST_LOG=info ostq worker …`): the command's output stays as it is otherwise.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return util::report_clap_error(&err),
    };
    init_logging();
    // Commands that print and exit end quietly when their reader goes (`ostq jobs … | head`),
    // as Unix tools do, instead of panicking on a broken pipe. Not the long-running ones: a
    // worker writes to its programs' stdin, servers to sockets; a peer closing those is normal.
    if matches!(
        cli.command,
        Command::Jobs(_)
            | Command::Job(_)
            | Command::Queues(_)
            | Command::Workers(_)
            | Command::History(_)
            | Command::Stats(_)
            | Command::Script(_)
            | Command::Doctor(_)
    ) {
        sigpipe::reset();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray blocking tasks (a stdin reader, say) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = std::io::stdout().flush();
            if let Some(exit) = err.downcast_ref::<Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("{}", exit.message);
                }
                return ExitCode::from(exit.code);
            }
            eprintln!("error: {}", util::one_line(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Push(args) => push::run(&global, args).await,
        Command::Worker(args) => exec::run(&global, args).await,
        Command::Stats(args) => stats::run(&global, args).await,
        Command::Jobs(args) => ops::jobs(&global, args).await,
        Command::Job(args) => ops::job(&global, args).await,
        Command::Retry(args) => ops::retry(&global, args).await,
        Command::Delete(args) => ops::delete(&global, args).await,
        Command::Purge(args) => ops::purge(&global, args).await,
        Command::Remove(args) => ops::remove(&global, args).await,
        Command::Pause(args) => ops::pause(&global, args, true).await,
        Command::Resume(args) => ops::pause(&global, args, false).await,
        Command::Shards(args) => ops::shards(&global, args).await,
        Command::Queues(args) => ops::queues(&global, args).await,
        Command::Workers(args) => ops::workers(&global, args).await,
        Command::History(args) => history::run(&global, args).await,
        Command::Metrics(args) => metrics::run(&global, args).await,
        Command::Dashboard(args) => dashboard::run(&global, args).await,
        Command::Cron(args) => cron::run(&global, args).await,
        Command::Scheduler(args) => cron::scheduler(&global, args).await,
        Command::Events(args) => events::run(&global, args).await,
        Command::Doctor(args) => doctor::run(&global, args).await,
        Command::Export(args) => backup::export(&global, args).await,
        Command::Import(args) => backup::import(&global, args).await,
        Command::Demo(args) => demo::run(&global, args).await,
        Command::Bench(args) => bench::run(&global, args).await,
        Command::Script(args) => script(args),
    }
}

/// `ostq script NAME`: the assembled text of one Lua script (shared helpers pasted in), as
/// `EVAL` needs it; the files under crates/ostq/lua/ are the sources it is built from.
fn script(args: cli::ScriptArgs) -> anyhow::Result<()> {
    let names = || {
        ostq::scripts::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if args.list {
        for (name, _) in ostq::scripts::ALL {
            println!("{name}");
        }
        return Ok(());
    }
    let wanted = args.name.unwrap_or_default();
    let wanted = wanted.trim_end_matches(".lua");
    match ostq::scripts::ALL.iter().find(|(n, _)| *n == wanted) {
        Some((_, text)) => {
            print!("{text}");
            Ok(())
        }
        None => anyhow::bail!("no script named {wanted:?}; the scripts are: {}", names()),
    }
}
