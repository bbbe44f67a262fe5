//! `ostq worker`: runs a program for every job, directly (never through a shell).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::cli::{Global, WorkerArgs};
use crate::util::{check_queue, connect, lib_err, now_ms, one_line, short_duration};

/// Bytes of a program's stdout kept as the job's result.
pub const MAX_RESULT: usize = 64 * 1024;
/// Bytes of the end of a program's stderr kept for the error message.
const STDERR_TAIL: usize = 2000;
/// How long the output pipes may stay open after the program exited (a child it left behind).
const IO_GRACE: Duration = Duration::from_millis(500);
/// How often `--burst` looks at the queues.
const BURST_POLL: Duration = Duration::from_millis(200);

/// What to run for a job.
struct ExecSpec {
    program: OsString,
    args: Vec<OsString>,
    /// Some argument contains `{}`: the payload goes into the arguments, not stdin.
    placeholder: bool,
    timeout: Option<Duration>,
    /// Pass the program's output through, and with a `[job id]` prefix or not.
    output: Output,
    /// Only these task names (`-` for none); empty: every name.
    tasks: Vec<String>,
}

/// What becomes of a program's output besides the result and the error message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Hidden,
    Plain,
    /// Each line prefixed with the job's id (several programs run at once).
    Prefixed,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
}

pub async fn run(global: &Global, args: WorkerArgs) -> anyhow::Result<()> {
    for q in &args.queues {
        check_queue(q)?;
    }
    let spec = Arc::new(exec_spec(&args)?);
    let client = connect(&global.redis_url()).await?;
    let counters = Arc::new(Counters::default());
    let worker = build_worker(&client, &args, spec.clone(), counters.clone())?;

    let queues: Vec<ostq::Queue> = args.queues.iter().map(|q| client.queue(q)).collect();
    if !args.no_doctor {
        note_doctor(&client).await;
    }
    note_paused(&queues).await;
    eprintln!(
        "ostq worker: serving {} with up to {} at once: {}{}",
        args.queues.join(", "),
        args.concurrency,
        describe_command(&spec),
        if args.burst {
            " (--burst: exits when drained)".to_string()
        } else if let Some(idle) = args.idle_exit {
            format!(" (--idle-exit: exits after {} idle)", short_duration(idle))
        } else {
            " (ctrl-c to stop)".to_string()
        }
    );

    let (burst, burst_wait, idle_exit) = (args.burst, args.burst_wait, args.idle_exit);
    let shutdown = async move {
        if burst {
            tokio::select! {
                _ = shutdown_signal() => eprintln!("ostq worker: stopping (signal)"),
                _ = drained(&queues, burst_wait) => eprintln!("ostq worker: queues drained"),
            }
        } else if let Some(idle) = idle_exit {
            tokio::select! {
                _ = shutdown_signal() => eprintln!("ostq worker: stopping (signal)"),
                _ = idle_for(&queues, idle) => eprintln!(
                    "ostq worker: nothing to do for {}: stopping (--idle-exit)",
                    short_duration(idle)
                ),
            }
        } else {
            shutdown_signal().await;
            eprintln!(
                "ostq worker: stopping; running jobs get up to the shutdown timeout to finish"
            );
        }
    };
    // --cron: the registered schedules of every queue fire from this process too, until the
    // worker stops.
    let (stop_cron, cron_stop) = tokio::sync::watch::channel(false);
    let cron = args.cron.then(|| {
        eprintln!("ostq worker: firing the registered schedules too (--cron)");
        tokio::spawn(crate::cron::run_registered(
            client.clone(),
            Vec::new(),
            cron_stop,
        ))
    });
    let worked = worker.run_until(shutdown).await;
    if let Some(cron) = cron {
        let _ = stop_cron.send(true);
        match cron.await {
            Ok(Err(e)) => eprintln!("warning: the schedules stopped firing: {e:#}"),
            Err(e) => eprintln!("warning: the scheduler task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    worked.map_err(lib_err("worker failed"))?;
    eprintln!(
        "ostq worker: stopped after {} completed and {} failed attempts",
        counters.completed.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The program to run for each job, from the command line after `--`.
fn exec_spec(args: &WorkerArgs) -> anyhow::Result<ExecSpec> {
    let mut command = args.command.iter();
    let program = command
        .next()
        .ok_or_else(|| anyhow!("no program given: ostq worker --queue Q -- PROGRAM [ARG...]"))?;
    let program = resolve_program(program)?;
    let rest: Vec<OsString> = command.cloned().collect();
    let placeholder = rest.iter().any(|a| contains_placeholder(a));
    let output = if args.no_output {
        Output::Hidden
    } else if args.concurrency > 1 {
        Output::Prefixed
    } else {
        Output::Plain
    };
    Ok(ExecSpec {
        program: program.into_os_string(),
        args: rest,
        placeholder,
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
        output,
        tasks: args.tasks.clone(),
    })
}

/// The library worker that runs `spec` for each job and reports each failure on stderr.
fn build_worker(
    client: &ostq::Client,
    args: &WorkerArgs,
    spec: Arc<ExecSpec>,
    counters: Arc<Counters>,
) -> anyhow::Result<ostq::Worker> {
    // The library's own limit is a backstop: our handler kills the program at --timeout itself.
    let library_timeout = spec.timeout.map(|t| t + Duration::from_secs(10));
    let mut builder = ostq::Worker::builder(client.clone())
        .concurrency(args.concurrency as usize)
        .prefetch(args.prefetch)
        .lease(args.lease)
        .timeout(library_timeout)
        .shutdown_timeout(args.shutdown_timeout)
        .retry(ostq::RetryPolicy::default().max_attempts(args.max_attempts))
        // `ostq worker` prints the start-up checks itself (the library logs them only when
        // RUST_LOG asks for logs).
        .doctor(false);
    if let Some(durability) = args.durable_outcomes {
        builder = builder.durable_outcomes(durability);
    }
    for q in &args.queues {
        builder = builder.queue(q);
    }
    let verbose = args.verbose;
    let error_counters = counters.clone();
    builder
        .handler(move |job: ostq::Job| {
            let spec = spec.clone();
            let counters = counters.clone();
            async move {
                let started = Instant::now();
                check_task(&spec.tasks, &job)?;
                let out = run_job(&spec, &job).await?;
                counters.completed.fetch_add(1, Ordering::Relaxed);
                if verbose {
                    eprintln!(
                        "job {} on {} done in {} (attempt {})",
                        job.id,
                        job.queue,
                        short_duration(started.elapsed()),
                        job.attempt
                    );
                }
                Ok::<_, ostq::BoxError>(out)
            }
        })
        .on_error(move |job, failure| {
            error_counters.failed.fetch_add(1, Ordering::Relaxed);
            report_failure(job, failure)
        })
        .build()
        .map_err(lib_err("cannot start the worker"))
}

/// With `--task`, a job whose name is not served fails its attempt (and is retried): another
/// worker may serve it, or this one after a deploy.
fn check_task(tasks: &[String], job: &ostq::Job) -> Result<(), ostq::BoxError> {
    let name = job.name.as_deref().unwrap_or("-");
    if tasks.is_empty() || tasks.iter().any(|t| t == name) {
        return Ok(());
    }
    Err(format!(
        "this worker serves only the tasks {} (--task), not '{name}'",
        tasks.join(", ")
    )
    .into())
}

/// One line on stderr per failed attempt.
fn report_failure(job: &ostq::Job, failure: &ostq::Failure) {
    let next = if failure.dead {
        "moved to the dead set".to_string()
    } else if let Some(wait) = failure.retry_in {
        format!("retry in {}", short_duration(wait))
    } else {
        "will be retried".to_string()
    };
    eprintln!(
        "job {} on {} failed (attempt {}/{}): {}; {next}",
        job.id,
        job.queue,
        job.attempt,
        job.max_attempts,
        one_line(&failure.error)
    );
}

/// Says which of the queues are paused (their jobs wait until `ostq resume`).
/// Prints the start-up checks' warnings and failures (never stops the worker: BullMQ and Sidekiq
/// warn about the eviction policy at start the same way).
async fn note_doctor(client: &ostq::Client) {
    use ostq::admin::doctor::Status;
    let Ok(report) = client.quick_doctor().await else {
        return;
    };
    for check in report.checks.iter().filter(|c| c.status != Status::Pass) {
        eprintln!(
            "warning: doctor: {} {}: {}",
            check.status.label(),
            check.name,
            check.summary
        );
        if let Some(fix) = &check.fix {
            eprintln!("    fix: {fix}");
        }
    }
}

async fn note_paused(queues: &[ostq::Queue]) {
    for q in queues {
        if let Ok(c) = q.counts().await {
            if c.paused {
                eprintln!(
                    "note: queue '{}' is paused: no job is taken from it until `ostq resume {}`",
                    q.name(),
                    q.name()
                );
            }
        }
    }
}

fn describe_command(spec: &ExecSpec) -> String {
    let mut words = vec![spec.program.to_string_lossy().into_owned()];
    words.extend(spec.args.iter().map(|a| a.to_string_lossy().into_owned()));
    let mode = if spec.placeholder {
        "payload as argument"
    } else {
        "payload on stdin"
    };
    format!("{} ({mode})", words.join(" "))
}

/// Completes when ctrl-c or SIGTERM arrives.
pub use ostq::worker::shutdown_signal;

/// Completes once no queue has pending or active jobs, nor scheduled or retry jobs due within
/// `wait`. Jobs leased by a dead worker count as active until a worker recovers them.
async fn drained(queues: &[ostq::Queue], wait: Duration) {
    let mut warned = false;
    loop {
        match is_drained(queues, wait).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) if !warned => {
                eprintln!("ostq worker: cannot read queue counts ({e:#}); retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(BURST_POLL).await;
    }
}

/// Completes once no queue has had a pending or running job for `idle` (read every
/// `idle`/10, between 200 ms and 1 s; a failed read counts as work, never as idleness).
async fn idle_for(queues: &[ostq::Queue], idle: Duration) {
    let poll = (idle / 10).clamp(BURST_POLL, Duration::from_secs(1));
    let mut idle_since: Option<Instant> = None;
    loop {
        let empty = is_idle(queues).await.unwrap_or(false);
        let now = Instant::now();
        if !empty {
            idle_since = None;
        } else if now.duration_since(*idle_since.get_or_insert(now)) >= idle {
            return;
        }
        tokio::time::sleep(poll).await;
    }
}

async fn is_idle(queues: &[ostq::Queue]) -> anyhow::Result<bool> {
    for q in queues {
        let c = q.counts().await?;
        if c.pending > 0 || c.active > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn is_drained(queues: &[ostq::Queue], wait: Duration) -> anyhow::Result<bool> {
    let horizon = now_ms().saturating_add(wait.as_millis() as u64);
    for q in queues {
        let c = q.counts().await?;
        if c.pending > 0 || c.active > 0 {
            return Ok(false);
        }
        for (n, state) in [
            (c.scheduled, ostq::JobState::Scheduled),
            (c.retry, ostq::JobState::Retry),
        ] {
            if n == 0 {
                continue;
            }
            let next = q.jobs(state, 0, 1).await?;
            let due = next.first().and_then(|j| j.due_at_ms).unwrap_or(0);
            if due <= horizon {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Finds the program now, so that a typo fails at start rather than on every job.
fn resolve_program(program: &OsStr) -> anyhow::Result<PathBuf> {
    let path = Path::new(program);
    if program.is_empty() {
        bail!("the program name is empty");
    }
    if path.components().count() > 1 || program.to_string_lossy().contains('/') {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("program {} not found", path.display());
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(path);
        if candidate.is_file() {
            return Ok(path.to_path_buf());
        }
    }
    bail!(
        "program {} not found on PATH (give a path like ./{} for a program in this directory)",
        path.display(),
        path.display()
    )
}

#[cfg(unix)]
fn os_bytes(s: &OsStr) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes()
}

#[cfg(not(unix))]
fn os_bytes(s: &OsStr) -> &[u8] {
    s.to_str().map(str::as_bytes).unwrap_or_default()
}

fn contains_placeholder(arg: &OsStr) -> bool {
    os_bytes(arg).windows(2).any(|w| w == b"{}")
}

/// `arg` with every `{}` replaced by `payload`, byte for byte.
#[cfg(unix)]
fn substitute(arg: &OsStr, payload: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = os_bytes(arg);
    let mut out = Vec::with_capacity(bytes.len() + payload.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"{}") {
            out.extend_from_slice(payload);
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

#[cfg(not(unix))]
fn substitute(arg: &OsStr, payload: &[u8]) -> OsString {
    let text = arg.to_string_lossy();
    OsString::from(text.replace("{}", &String::from_utf8_lossy(payload)))
}

/// Kills the program's whole process group when dropped: after a timeout, when the library
/// aborts the attempt (its own timeout, a shutdown), and after a normal exit (leftover children).
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs the program for one job; Ok(stdout) when it exits 0.
/// The program's command for one job: the payload in its arguments or on its stdin, the job in
/// its environment, in a process group of its own.
fn command_for(
    spec: &ExecSpec,
    job: &ostq::Job,
) -> Result<tokio::process::Command, ostq::BoxError> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    if spec.placeholder {
        if job.payload.contains(&0) {
            return Err(ostq::Permanent::new(
                "the payload contains a NUL byte, which a program argument cannot hold: \
                 run the worker without {} to get payloads on stdin",
            )
            .into());
        }
        for arg in &spec.args {
            if contains_placeholder(arg) {
                cmd.arg(substitute(arg, &job.payload));
            } else {
                cmd.arg(arg);
            }
        }
        cmd.stdin(Stdio::null());
    } else {
        cmd.args(&spec.args);
        cmd.stdin(Stdio::piped());
    }
    cmd.env("OSTQ_JOB_ID", &job.id)
        .env("OSTQ_QUEUE", &job.queue)
        .env("OSTQ_ATTEMPT", job.attempt.to_string())
        // The task name ("" for jobs pushed without one): one program can serve every name.
        .env("OSTQ_TASK", job.name.as_deref().unwrap_or(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The job's trace context (the producer's span) for the program, as TRACEPARENT/TRACESTATE:
    // its spans then join the producer's trace. (Not this worker's `job` span: `ostq worker`
    // exports no spans, so a child of it would point at a span no collector ever receives.) The
    // worker's own variables are not passed on: they belong to no job.
    #[cfg(feature = "opentelemetry")]
    {
        cmd.env_remove("TRACEPARENT").env_remove("TRACESTATE");
        if let Some(trace) = job.trace() {
            cmd.env("TRACEPARENT", trace.traceparent());
            if !trace.tracestate().is_empty() {
                cmd.env("TRACESTATE", trace.tracestate());
            }
        }
    }
    #[cfg(unix)]
    cmd.process_group(0);

    Ok(cmd)
}

async fn run_job(spec: &ExecSpec, job: &ostq::Job) -> Result<Option<Vec<u8>>, ostq::BoxError> {
    let mut cmd = command_for(spec, job)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", Path::new(&spec.program).display()))?;
    let _killer = GroupKiller(child.id());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let mut out = Vec::new();
    let mut err = Vec::new();
    let run = async {
        let prefix = (spec.output == Output::Prefixed).then(|| format!("[{}] ", job.id));
        let echo =
            |stream| (spec.output != Output::Hidden).then(|| Echo::new(stream, prefix.clone()));
        let io = async {
            tokio::join!(
                feed(stdin, &job.payload),
                drain(
                    stdout,
                    &mut out,
                    MAX_RESULT,
                    Keep::Head,
                    echo(Stream::Stdout)
                ),
                drain(
                    stderr,
                    &mut err,
                    STDERR_TAIL,
                    Keep::Tail,
                    echo(Stream::Stderr)
                ),
            )
        };
        tokio::pin!(io);
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = &mut io => None,
        };
        match exited {
            Some(status) => {
                // Output a leftover child keeps open must not hold up the job.
                let _ = tokio::time::timeout(IO_GRACE, &mut io).await;
                status
            }
            None => child.wait().await,
        }
    };
    let finished = match spec.timeout {
        Some(limit) => tokio::time::timeout(limit, run).await.ok(),
        None => Some(run.await),
    };
    let Some(status) = finished else {
        // Dropping `_killer` on return kills the program and everything it started.
        let tail = stderr_tail(&err);
        let limit = spec.timeout.unwrap_or_default();
        let mut msg = format!("timed out after {}: killed", short_duration(limit));
        if !tail.is_empty() {
            msg.push_str(&format!(" (stderr: {tail})"));
        }
        return Err(msg.into());
    };
    let status = status.map_err(|e| format!("waiting for the program failed: {e}"))?;
    if status.success() {
        Ok((!out.is_empty()).then_some(out))
    } else {
        Err(describe_exit(status, &stderr_tail(&err)).into())
    }
}

fn describe_exit(status: ExitStatus, tail: &str) -> String {
    let what = match status.code() {
        Some(code) => format!("exit code {code}"),
        None => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                match status.signal() {
                    Some(sig) => format!("killed by signal {sig}"),
                    None => "failed".to_string(),
                }
            }
            #[cfg(not(unix))]
            {
                "failed".to_string()
            }
        }
    };
    if tail.is_empty() {
        what
    } else {
        format!("{what}: {tail}")
    }
}

fn stderr_tail(err: &[u8]) -> String {
    let start = err.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&err[start..]).trim().to_string()
}

async fn feed(stdin: Option<tokio::process::ChildStdin>, payload: &[u8]) {
    if let Some(mut stdin) = stdin {
        // A program that does not read its stdin closes the pipe: not an error.
        let _ = stdin.write_all(payload).await;
        let _ = stdin.shutdown().await;
    }
}

/// Which bytes of a stream to keep once it is longer than the limit.
#[derive(Clone, Copy)]
enum Keep {
    Head,
    Tail,
}

/// This process's stdout or stderr.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Passes a program's output through, whole lines at a time (so that the lines of programs
/// running at once do not mix), each with an optional prefix.
struct Echo {
    stream: Stream,
    prefix: Option<String>,
    /// The start of a line not yet ended.
    partial: Vec<u8>,
}

/// A line longer than this is passed through in pieces rather than held back.
const ECHO_LINE_MAX: usize = 64 * 1024;

impl Echo {
    fn new(stream: Stream, prefix: Option<String>) -> Self {
        Self {
            stream,
            prefix,
            partial: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let cut = match self.partial.iter().rposition(|b| *b == b'\n') {
            Some(end) => end + 1,
            None if self.partial.len() > ECHO_LINE_MAX => self.partial.len(),
            None => return,
        };
        let complete: Vec<u8> = self.partial.drain(..cut).collect();
        self.emit(&complete);
    }

    /// At the end of the stream: a last line without its line feed gets one.
    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let mut rest = std::mem::take(&mut self.partial);
            rest.push(b'\n');
            self.emit(&rest);
        }
    }

    fn emit(&self, lines: &[u8]) {
        let mut text = Vec::with_capacity(lines.len() + 32);
        for line in lines.split_inclusive(|b| *b == b'\n') {
            if let Some(prefix) = &self.prefix {
                text.extend_from_slice(prefix.as_bytes());
            }
            text.extend_from_slice(line);
        }
        // One write per batch of lines; an error (a closed pipe) is not the job's concern.
        let _ = match self.stream {
            Stream::Stdout => std::io::Write::write_all(&mut std::io::stdout().lock(), &text),
            Stream::Stderr => std::io::Write::write_all(&mut std::io::stderr().lock(), &text),
        };
    }
}

/// Reads `r` to its end, keeping at most about `limit` bytes: the first ones or the last ones;
/// with `echo`, passing everything through as well.
async fn drain(
    r: Option<impl AsyncRead + Unpin>,
    out: &mut Vec<u8>,
    limit: usize,
    keep: Keep,
    mut echo: Option<Echo>,
) {
    let Some(mut r) = r else { return };
    let mut buf = [0u8; 8192];
    loop {
        let read = r.read(&mut buf).await;
        if let (Ok(n), Some(echo)) = (&read, echo.as_mut()) {
            if *n > 0 {
                echo.write(&buf[..*n]);
            }
        }
        match read {
            Ok(0) | Err(_) => {
                if let Some(echo) = echo.as_mut() {
                    echo.finish();
                }
                return;
            }
            Ok(n) => match keep {
                Keep::Head => {
                    let room = limit.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
                Keep::Tail => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > 2 * limit {
                        out.drain(..out.len() - limit);
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_byte_for_byte() {
        let arg = OsString::from("--id={}-{}");
        assert!(contains_placeholder(&arg));
        assert!(!contains_placeholder(OsStr::new("{ }")));
        let out = substitute(&arg, b"$(x);`y`");
        assert_eq!(os_bytes(&out), b"--id=$(x);`y`-$(x);`y`");
    }

    #[test]
    fn missing_programs_are_reported() {
        assert!(resolve_program(OsStr::new("sh")).is_ok());
        assert!(resolve_program(OsStr::new("no-such-program-ostq")).is_err());
        assert!(resolve_program(OsStr::new("./no/such")).is_err());
    }
}
