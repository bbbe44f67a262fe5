//! [`RedisServer`]: one private `redis-server` process, and
//! [`RedisServerBuilder`] for its options.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::ports::free_port;
use crate::resp::{Reply, Resp};

/// How many ports are tried before giving up on starting a server.
pub(crate) const START_ATTEMPTS: usize = 20;
/// How long a freshly spawned server may take to answer `PING`, by default.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `SHUTDOWN NOSAVE` may take before the server is killed, by default.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the log file inside a server's directory.
pub(crate) const LOG_FILE: &str = "redis.log";
/// Where the server's stdout/stderr go (config errors are printed there
/// before the log file is opened).
pub(crate) const STDERR_FILE: &str = "redis.stderr";
/// What to do when `redis-server` or `redis-cli` is missing, unless the
/// builder says otherwise.
pub(crate) const INSTALL_HINT: &str = "apt-get install redis-server (scripts/test does this)";

/// The error for a missing `program`: "`program` is not installed: `hint`".
pub(crate) fn not_installed(program: &str, hint: &str) -> anyhow::Error {
    anyhow!("{program} is not installed: {hint}")
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS` and returns its stdout; an error when it fails.
pub(crate) fn run_redis_cli(port: u16, args: &[&OsStr]) -> anyhow::Result<Vec<u8>> {
    let port = port.to_string();
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => not_installed("redis-cli", INSTALL_HINT),
            _ => anyhow::Error::new(error).context("running redis-cli"),
        })?;
    if !output.status.success() {
        bail!(
            "redis-cli -p {} {:?} failed ({}): {}{}",
            port,
            args,
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim(),
        );
    }
    Ok(output.stdout)
}

/// `redis-cli` with text arguments against `port`, its output trimmed.
pub(crate) fn cli_text(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let stdout = run_redis_cli(port, &args)?;
    Ok(String::from_utf8_lossy(&stdout).trim().to_owned())
}

/// The last `lines` lines of a server's console output and log file in
/// `dir`, for error messages.
pub(crate) fn log_tail(dir: &Path, lines: usize) -> String {
    [STDERR_FILE, LOG_FILE]
        .iter()
        .filter_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        .map(|text| {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        })
        .filter(|tail| !tail.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The major version of the installed `redis-server` (`redis-server --version`).
fn major_version(hint: &str) -> anyhow::Result<u32> {
    let output = Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => not_installed("redis-server", hint),
            _ => anyhow::Error::new(error).context("running redis-server --version"),
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "Redis server v=7.0.15 sha=..."
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the redis-server version from {text:?}"))
}

/// Where a server keeps its files.
#[derive(Debug)]
enum ServerDir {
    /// A fresh temporary directory, removed on drop.
    Temp(tempfile::TempDir),
    /// A directory the caller chose; it stays.
    Kept(PathBuf),
}

impl ServerDir {
    fn path(&self) -> &Path {
        match self {
            ServerDir::Temp(dir) => dir.path(),
            ServerDir::Kept(dir) => dir,
        }
    }
}

/// Options of a [`RedisServer`], from [`RedisServer::builder`].
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use std::time::Duration;
/// let data = tempfile::tempdir()?;
/// let redis = ostq_testkit::RedisServer::builder()
///     .args(["--appendonly", "yes"])
///     .dir(data.path().join("redis")) // kept after the server is gone
///     .enable_debug_command()
///     .timeout(Duration::from_secs(15))
///     .start()?;
/// assert_eq!(redis.cli(&["DEBUG", "SLEEP", "0"])?, "OK");
/// drop(redis);
/// assert!(data.path().join("redis/redis.log").exists());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    args: Vec<String>,
    dir: Option<PathBuf>,
    debug_command: bool,
    install_hint: String,
    ready_timeout: Duration,
    shutdown_timeout: Duration,
}

impl RedisServerBuilder {
    /// Appends one `redis-server` command-line argument; arguments come after
    /// the defaults, so they override them.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends `redis-server` command-line arguments (see [`Self::arg`]).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Works in `dir` (created if needed) instead of a fresh temporary
    /// directory, and leaves it in place when the server is dropped, e.g. to
    /// keep the AOF and the log of a failed run. Only one server may use a
    /// directory at a time.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Allows the `DEBUG` command (`DEBUG SLEEP`, ...): Redis 7 refuses it
    /// unless started with `--enable-debug-command yes`, an option older
    /// versions do not know (and they allow `DEBUG` anyway).
    pub fn enable_debug_command(mut self) -> Self {
        self.debug_command = true;
        self
    }

    /// What the error says to do when `redis-server` is not installed:
    /// "redis-server is not installed: `hint`". The default is
    /// "apt-get install redis-server (scripts/test does this)".
    pub fn install_hint(mut self, hint: &str) -> Self {
        hint.clone_into(&mut self.install_hint);
        self
    }

    /// How long a (re)started server may take to answer `PING` (default
    /// 10 s), and how long `SHUTDOWN NOSAVE` may take in
    /// [`RedisServer::restart`] before the server is killed (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self.shutdown_timeout = timeout;
        self
    }

    /// Starts the server on a free 127.0.0.1 port and waits until it answers
    /// `PING`; if the port turns out to be taken by another process, another
    /// port is tried (up to 20 times).
    pub fn start(self) -> anyhow::Result<RedisServer> {
        self.start_on_free_port(free_port)
    }

    /// Starts a server on ports from `pick_port`, retrying when the port
    /// turns out to be taken.
    pub(crate) fn start_on_free_port(
        mut self,
        pick_port: impl Fn() -> u16,
    ) -> anyhow::Result<RedisServer> {
        if self.debug_command && major_version(&self.install_hint)? >= 7 {
            // Before the caller's arguments, like the other defaults.
            self.args
                .splice(0..0, ["--enable-debug-command".into(), "yes".into()]);
        }
        let kept = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                Some(
                    dir.canonicalize()
                        .with_context(|| format!("resolving {}", dir.display()))?,
                )
            }
            None => None,
        };
        let mut last_error = anyhow!("redis-server was not started");
        for _ in 0..START_ATTEMPTS {
            let dir = match &kept {
                Some(dir) => ServerDir::Kept(dir.clone()),
                None => ServerDir::Temp(
                    tempfile::Builder::new()
                        .prefix("ostq-redis-")
                        .tempdir()
                        .context("creating a temporary directory for redis-server")?,
                ),
            };
            let mut server = RedisServer {
                child: None,
                port: pick_port(),
                options: self.clone(),
                dir,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(StartError::Fatal(error)) => return Err(error),
                Err(StartError::PortTaken(error)) => last_error = error,
            }
        }
        Err(last_error.context(format!(
            "redis-server did not start after {START_ATTEMPTS} attempts on different ports"
        )))
    }
}

/// A private `redis-server` process for one test.
///
/// It listens on 127.0.0.1 on a free port, works in a fresh temporary
/// directory, and does not persist anything unless asked to (`save ""`,
/// `appendonly no`). Dropping it kills the process and removes the directory.
/// [`RedisServer::builder`] has more options.
///
/// ```
/// use ostq_testkit::RedisServer;
///
/// # fn main() -> anyhow::Result<()> {
/// let mut redis = RedisServer::start_with(&["--appendonly", "yes"])?;
/// redis.cli(&["RPUSH", "jobs", "a", "b"])?;
/// redis.restart()?; // data comes back from the AOF in `redis.dir()`
/// assert_eq!(redis.cli(&["LLEN", "jobs"])?, "2");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    /// The running process; `None` after [`RedisServer::kill`].
    child: Option<Child>,
    port: u16,
    /// The options it was started with, reused on restart.
    options: RedisServerBuilder,
    /// Removed on drop (unless kept), after the process is gone.
    dir: ServerDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free 127.0.0.1 port in a fresh temporary
    /// directory, without persistence (`save ""`, `appendonly no`), and waits
    /// until it answers `PING`.
    ///
    /// If the server cannot come up because another process took the port in
    /// the meantime, another port is tried (up to 20 times).
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// assert_eq!(redis.cli(&["PING"])?, "PONG");
    /// # Ok(())
    /// # }
    /// ```
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::builder().start()
    }

    /// Like [`RedisServer::start`], with extra `redis-server` command-line
    /// arguments appended after the defaults, so they override them.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start_with(&["--maxmemory", "2mb"])?;
    /// assert_eq!(redis.cli(&["CONFIG", "GET", "maxmemory"])?, "maxmemory\n2097152");
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_with(args: &[&str]) -> anyhow::Result<RedisServer> {
        Self::builder().args(args.iter().copied()).start()
    }

    /// The options of a server to start: extra arguments, a directory that
    /// is kept, the `DEBUG` command, the install hint, the timeouts.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder {
            args: Vec::new(),
            dir: None,
            debug_command: false,
            install_hint: INSTALL_HINT.to_owned(),
            ready_timeout: READY_TIMEOUT,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
        }
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// assert_ne!(redis.port(), 6379);
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to connect to, `redis://127.0.0.1:{port}`.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory; it holds the AOF/RDB files, the log
    /// file `redis.log` and `redis.stderr` (its console output). It survives
    /// [`RedisServer::kill`] and [`RedisServer::restart`] and is removed on
    /// drop (unless it was given with [`RedisServerBuilder::dir`]).
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// assert!(redis.dir().join("redis.log").exists());
    /// # Ok(())
    /// # }
    /// ```
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A new [`Resp`] connection to the server.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// let reply = redis.resp()?.command(&["ECHO", "hi"])?;
    /// assert_eq!(reply, ostq_testkit::Reply::Bulk(b"hi".to_vec()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn resp(&self) -> std::io::Result<Resp> {
        Resp::connect(self.port)
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT <args>` and returns its standard
    /// output with surrounding whitespace trimmed.
    ///
    /// Fails if `redis-cli` exits non-zero (e.g. it cannot connect). Note
    /// that `redis-cli` exits 0 on error replies and prints them (e.g.
    /// `ERR unknown command ...`) to standard output. Options placed first,
    /// such as `-c` for cluster redirects, are passed to `redis-cli`.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// redis.cli(&["HSET", "h", "f", "v"])?;
    /// assert_eq!(redis.cli(&["HGETALL", "h"])?, "f\nv");
    /// # Ok(())
    /// # }
    /// ```
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        cli_text(self.port, args)
    }

    /// Like [`RedisServer::cli`], but with raw byte arguments and raw output,
    /// for binary payloads.
    ///
    /// The output is returned as printed by `redis-cli`, minus the single
    /// newline it appends, so binary values round-trip exactly. Arguments
    /// cannot contain NUL bytes (a limitation of process arguments).
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// redis.cli_bytes(&[b"SET", b"k", b"\xff\xfe"])?;
    /// assert_eq!(redis.cli_bytes(&[b"GET", b"k"])?, b"\xff\xfe");
    /// # Ok(())
    /// # }
    /// ```
    pub fn cli_bytes(&self, args: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
        if args.iter().any(|arg| arg.contains(&0)) {
            bail!("redis-cli arguments cannot contain NUL bytes");
        }
        let args: Vec<&OsStr> = args.iter().map(|arg| OsStr::from_bytes(arg)).collect();
        let mut stdout = run_redis_cli(self.port, &args)?;
        if stdout.last() == Some(&b'\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Kills the server process with SIGKILL and waits for it to exit, like a
    /// crash. The directory stays, so [`RedisServer::restart`] can bring the
    /// server back with its AOF/RDB. Does nothing if it is not running.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let mut redis = ostq_testkit::RedisServer::start()?;
    /// redis.kill();
    /// assert!(redis.cli(&["PING"]).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it has exited already; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (`SHUTDOWN NOSAVE`, falling back to SIGKILL after
    /// 10 s or the builder's [`timeout`](RedisServerBuilder::timeout)) and
    /// starts it again on the same port and directory with the same
    /// arguments, then waits for `PING`. Also works after
    /// [`RedisServer::kill`].
    ///
    /// `SHUTDOWN NOSAVE` skips the RDB snapshot but still flushes and fsyncs
    /// the AOF, so a server started with `--appendonly yes` comes back with
    /// its data. Fails if another process took the port while the server was
    /// down.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let mut redis = ostq_testkit::RedisServer::start()?;
    /// redis.restart()?;
    /// assert_eq!(redis.cli(&["PING"])?, "PONG");
    /// # Ok(())
    /// # }
    /// ```
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        // A port closed a moment ago can be busy briefly; retry a little.
        let mut last_error = anyhow!("redis-server was not restarted");
        for attempt in 0..5u64 {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(StartError::Fatal(error)) => return Err(error),
                Err(StartError::PortTaken(error)) => last_error = error,
            }
            thread::sleep(Duration::from_millis(100 * (attempt + 1)));
        }
        Err(last_error.context(format!(
            "restarting redis-server on port {}: the port is taken",
            self.port
        )))
    }

    /// Shuts the server down gracefully, killing it if that takes too long.
    fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // The server closes the connection without a reply.
            let _ =
                Resp::connect(self.port).and_then(|mut resp| resp.command(&["SHUTDOWN", "NOSAVE"]));
            let deadline = Instant::now() + self.options.shutdown_timeout;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }

    /// Spawns the process on `self.port` and waits until it answers `PING`.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        self.kill();
        let dir = self.dir.path();
        let log = dir.join(LOG_FILE);
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(STDERR_FILE))
            .context("creating the stderr file of redis-server")
            .map_err(StartError::Fatal)?;
        let output_too = output
            .try_clone()
            .context("cloning the stderr file of redis-server")
            .map_err(StartError::Fatal)?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--logfile")
            .arg(&log)
            .args(&self.options.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(output_too)
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => {
                    StartError::Fatal(not_installed("redis-server", &self.options.install_hint))
                }
                _ => StartError::Fatal(anyhow::Error::new(error).context("spawning redis-server")),
            })?;
        let pid = child.id();
        self.child = Some(child);
        let result = self.wait_ready(pid);
        if result.is_err() {
            self.kill();
        }
        result
    }

    /// Waits until our process (not some other server on the same port)
    /// answers `PING` with `+PONG`.
    fn wait_ready(&mut self, pid: u32) -> Result<(), StartError> {
        let timeout = self.options.ready_timeout;
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.exited() {
                let log = log_tail(self.dir(), 20);
                let error = anyhow!(
                    "redis-server on port {} exited early ({status}); log:\n{log}",
                    self.port
                );
                return Err(if log.contains("Address already in use") {
                    StartError::PortTaken(error)
                } else {
                    StartError::Fatal(error)
                });
            }
            match Resp::connect(self.port).and_then(|mut resp| resp.command(&["PING"])) {
                Ok(Reply::Status(pong)) if pong == "PONG" => match server_pid(self.port) {
                    Ok(Some(answered)) if answered == pid => return Ok(()),
                    Ok(Some(answered)) => {
                        return Err(StartError::PortTaken(anyhow!(
                            "port {} is served by another redis-server (pid {answered})",
                            self.port
                        )))
                    }
                    Ok(None) => last = "INFO server lacks process_id".to_owned(),
                    Err(error) => last = error.to_string(),
                },
                // E.g. "LOADING Redis is loading the dataset in memory".
                Ok(reply) => last = format!("{reply:?}"),
                Err(error) => last = error.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(anyhow!(
                    "redis-server on port {} did not answer PING within {timeout:?} (last: {last}); log:\n{}",
                    self.port,
                    log_tail(self.dir(), 20)
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(status)) => status,
            Some(Err(_)) | None => None,
        }
    }
}

impl Drop for RedisServer {
    /// Kills the process and waits for it; the directory is removed after
    /// (unless it was given with [`RedisServerBuilder::dir`]).
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a start attempt failed.
enum StartError {
    /// The port was taken by someone else; another port may work.
    PortTaken(anyhow::Error),
    /// Retrying will not help (bad arguments, missing binary, timeout).
    Fatal(anyhow::Error),
}

/// The process id of the server answering on `port`.
fn server_pid(port: u16) -> anyhow::Result<Option<u32>> {
    Ok(Resp::connect(port)?
        .info_field(&["INFO", "server"], "process_id")?
        .and_then(|pid| pid.parse().ok()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::net::TcpListener;

    use super::*;
    use crate::ports::localhost;

    /// True if a process with this pid exists (and is not a zombie we own).
    pub(crate) fn process_exists(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Field 3 is the state; "Z" is a zombie.
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    pub(crate) fn pid_of(server: &RedisServer) -> u32 {
        server.pid().unwrap()
    }

    fn ping(port: u16) -> std::io::Result<Reply> {
        Resp::connect(port)?.command(&["PING"])
    }

    #[test]
    fn start_answers_and_cleans_up() {
        let server = RedisServer::start().unwrap();
        let port = server.port();
        assert_ne!(port, 6379);
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
        assert_eq!(server.cli(&["PING"]).unwrap(), "PONG");
        assert_eq!(ping(port).unwrap(), Reply::Status("PONG".into()));
        assert_eq!(server.cli(&["CONFIG", "GET", "save"]).unwrap(), "save");
        assert_eq!(
            server.cli(&["CONFIG", "GET", "appendonly"]).unwrap(),
            "appendonly\nno"
        );
        assert_eq!(
            server.cli(&["CONFIG", "GET", "bind"]).unwrap(),
            "bind\n127.0.0.1"
        );
        let dir = server.dir().to_path_buf();
        assert_eq!(
            server.cli(&["CONFIG", "GET", "dir"]).unwrap(),
            format!("dir\n{}", dir.canonicalize().unwrap().display())
        );
        assert!(dir.join(LOG_FILE).exists());
        let pid = pid_of(&server);
        assert!(process_exists(pid));

        drop(server);
        assert!(!process_exists(pid), "redis-server still running");
        assert!(!dir.exists(), "temp dir left behind");
        assert!(ping(port).is_err(), "port still answers");
    }

    #[test]
    fn start_with_appends_args_that_override_defaults() {
        let server =
            RedisServer::start_with(&["--appendonly", "yes", "--maxmemory", "2mb"]).unwrap();
        assert_eq!(
            server.cli(&["CONFIG", "GET", "appendonly"]).unwrap(),
            "appendonly\nyes"
        );
        assert_eq!(
            server.cli(&["CONFIG", "GET", "maxmemory"]).unwrap(),
            "maxmemory\n2097152"
        );
    }

    #[test]
    fn bad_args_fail_fast_with_the_log() {
        let started = Instant::now();
        let error = RedisServer::start_with(&["--no-such-option", "1"]).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("exited early"), "{message}");
        assert!(message.contains("no-such-option"), "{message}");
        assert!(started.elapsed() < READY_TIMEOUT, "retried a fatal error");
    }

    #[test]
    fn taken_ports_are_retried_on_another_port() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // One port held by a plain listener, one by another redis-server.
        let listener = TcpListener::bind(localhost(0)).unwrap();
        let plain = listener.local_addr().unwrap().port();
        let other = RedisServer::start().unwrap();
        let taken = [plain, other.port()];
        let calls = AtomicUsize::new(0);
        let server = RedisServer::builder()
            .start_on_free_port(|| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                taken.get(call).copied().unwrap_or_else(free_port)
            })
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(!taken.contains(&server.port()));
        assert_eq!(server.cli(&["PING"]).unwrap(), "PONG");
        assert_eq!(other.cli(&["PING"]).unwrap(), "PONG");
    }

    #[test]
    fn cli_runs_commands() {
        let server = RedisServer::start().unwrap();
        assert_eq!(server.cli(&["SET", "k", "  v  "]).unwrap(), "OK");
        assert_eq!(server.cli(&["GET", "k"]).unwrap(), "v");
        assert_eq!(server.cli(&["STRLEN", "k"]).unwrap(), "5");
        assert_eq!(server.cli(&["RPUSH", "l", "a", "b"]).unwrap(), "2");
        assert_eq!(server.cli(&["LRANGE", "l", "0", "-1"]).unwrap(), "a\nb");
        // redis-cli exits 0 on error replies; the error text is the output.
        assert!(server.cli(&["NOSUCHCOMMAND"]).unwrap().starts_with("ERR"));
    }

    #[test]
    fn cli_fails_when_the_server_is_gone() {
        let mut server = RedisServer::start().unwrap();
        server.kill();
        assert!(server.cli(&["PING"]).is_err());
    }

    #[test]
    fn cli_bytes_round_trips_non_utf8() {
        let server = RedisServer::start().unwrap();
        let value: &[u8] = b"\xff\xfe\x80 binary\n\r\t\x01 \xc3\x28 ";
        assert_eq!(
            server.cli_bytes(&[b"SET", b"bin\xff", value]).unwrap(),
            b"OK"
        );
        assert_eq!(server.cli_bytes(&[b"GET", b"bin\xff"]).unwrap(), value);
        assert_eq!(
            server.cli(&["STRLEN", "bin\u{fffd}"]).unwrap(),
            "0",
            "the key must be the raw byte, not a replacement character"
        );
        assert_eq!(
            server.cli_bytes(&[b"STRLEN", b"bin\xff"]).unwrap(),
            value.len().to_string().as_bytes()
        );
        assert!(server.cli_bytes(&[b"SET", b"k", b"nul\0"]).is_err());
    }

    #[test]
    fn restart_with_aof_keeps_data() {
        let mut server = RedisServer::start_with(&["--appendonly", "yes"]).unwrap();
        let port = server.port();
        let dir = server.dir().to_path_buf();
        let old_pid = pid_of(&server);
        server.cli(&["SET", "survivor", "yes"]).unwrap();
        server.cli(&["RPUSH", "queue", "j1", "j2", "j3"]).unwrap();

        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_eq!(server.dir(), dir);
        assert_ne!(pid_of(&server), old_pid);
        assert!(!process_exists(old_pid));
        assert_eq!(
            server.cli(&["CONFIG", "GET", "appendonly"]).unwrap(),
            "appendonly\nyes"
        );
        assert_eq!(server.cli(&["GET", "survivor"]).unwrap(), "yes");
        assert_eq!(server.cli(&["LLEN", "queue"]).unwrap(), "3");
    }

    #[test]
    fn restart_without_persistence_loses_data() {
        let mut server = RedisServer::start().unwrap();
        server.cli(&["SET", "gone", "1"]).unwrap();
        server.restart().unwrap();
        assert_eq!(server.cli(&["EXISTS", "gone"]).unwrap(), "0");
    }

    #[test]
    fn kill_then_restart_recovers_acknowledged_aof_writes() {
        let mut server = RedisServer::start_with(&["--appendonly", "yes"]).unwrap();
        server.cli(&["SET", "acked", "1"]).unwrap();
        let pid = pid_of(&server);
        server.kill();
        assert!(!process_exists(pid));
        assert!(server.pid().is_none());
        assert!(server.cli(&["PING"]).is_err());
        assert!(server.dir().exists(), "kill must keep the directory");
        server.kill(); // idempotent

        server.restart().unwrap();
        assert_eq!(server.cli(&["GET", "acked"]).unwrap(), "1");
    }

    #[test]
    fn a_given_dir_is_used_and_kept() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("nested").join("redis");
        let mut server = RedisServer::builder()
            .args(["--appendonly", "yes"])
            .arg("--appendfsync")
            .arg("everysec")
            .dir(&dir)
            .start()
            .unwrap();
        let dir = dir.canonicalize().unwrap();
        assert_eq!(server.dir(), dir);
        assert_eq!(
            server.cli(&["CONFIG", "GET", "dir"]).unwrap(),
            format!("dir\n{}", dir.display())
        );
        assert_eq!(
            server.cli(&["CONFIG", "GET", "appendfsync"]).unwrap(),
            "appendfsync\neverysec"
        );
        server.cli(&["SET", "k", "v"]).unwrap();
        server.restart().unwrap();
        assert_eq!(server.cli(&["GET", "k"]).unwrap(), "v");
        let pid = pid_of(&server);
        drop(server);
        assert!(!process_exists(pid));
        assert!(dir.join(LOG_FILE).exists(), "the given dir must stay");
    }

    #[test]
    fn debug_command_is_off_unless_enabled() {
        let plain = RedisServer::start().unwrap();
        let major = major_version(INSTALL_HINT).unwrap();
        let refused = plain.cli(&["DEBUG", "SLEEP", "0"]).unwrap();
        if major >= 7 {
            assert!(refused.starts_with("ERR"), "{refused}");
        }
        let debug = RedisServer::builder()
            .enable_debug_command()
            .start()
            .unwrap();
        assert_eq!(debug.cli(&["DEBUG", "SLEEP", "0"]).unwrap(), "OK");
    }

    #[test]
    fn missing_programs_say_how_to_install_them() {
        let message = not_installed("redis-server", "apt-get install redis-server").to_string();
        assert_eq!(
            message,
            "redis-server is not installed: apt-get install redis-server"
        );
        let builder = RedisServer::builder().install_hint("run scripts/demo");
        assert_eq!(builder.install_hint, "run scripts/demo");
    }

    #[test]
    fn parallel_starts_all_succeed() {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                thread::spawn(move || {
                    let server = RedisServer::start().unwrap();
                    let value = format!("v{i}");
                    server.cli(&["SET", "k", &value]).unwrap();
                    assert_eq!(server.cli(&["GET", "k"]).unwrap(), value);
                    server
                })
            })
            .collect();
        let servers: Vec<RedisServer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ports: BTreeSet<u16> = servers.iter().map(RedisServer::port).collect();
        assert_eq!(ports.len(), 8, "servers share a port");
        for (i, server) in servers.iter().enumerate() {
            // Each server kept its own data: nobody talked to a neighbour.
            assert_eq!(server.cli(&["GET", "k"]).unwrap(), format!("v{i}"));
            assert_eq!(server.cli(&["DBSIZE"]).unwrap(), "1");
        }
        let pids: Vec<u32> = servers.iter().map(pid_of).collect();
        drop(servers);
        assert!(pids.iter().all(|pid| !process_exists(*pid)));
    }
}
