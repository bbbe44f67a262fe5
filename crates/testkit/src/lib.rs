//! Test harness for ostq: private, throw-away `redis-server` processes.
//!
//! Every [`RedisServer`] runs in its own temporary directory on a free
//! `127.0.0.1` port (never 6379), so tests can run in parallel and leave
//! nothing behind: the process is killed and the directory removed when the
//! value is dropped. [`RedisCluster`] builds a small Redis Cluster out of such
//! servers.
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

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

mod proxy;
pub use proxy::Proxy;

/// The port of a system-wide Redis; never handed out.
const DEFAULT_REDIS_PORT: u16 = 6379;
/// How many ports are tried before giving up on starting a server.
const START_ATTEMPTS: usize = 20;
/// How long a freshly spawned server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `SHUTDOWN NOSAVE` may take before the server is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster may take until every node reports `cluster_state:ok`.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Offset of the Redis Cluster bus port from the client port.
const CLUSTER_BUS_OFFSET: u16 = 10000;
/// Cluster node ports stay below this so that `port + 10000` is a valid port.
const CLUSTER_PORT_LIMIT: u16 = 55000;
/// Name of the log file inside a server's directory.
const LOG_FILE: &str = "redis.log";
/// Where the server's stdout/stderr go (config errors are printed there
/// before the log file is opened).
const STDERR_FILE: &str = "redis.stderr";

const REDIS_SERVER_MISSING: &str =
    "redis-server not found: install it with `apt-get install redis-server` (scripts/test does this)";
const REDIS_CLI_MISSING: &str =
    "redis-cli not found: install it with `apt-get install redis-server` (scripts/test does this)";

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

fn localhost(port: u16) -> SocketAddr {
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
fn pseudo_random() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    hasher.finish()
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS` and returns its stdout; an error when it fails.
fn run_redis_cli(port: u16, args: &[&OsStr]) -> anyhow::Result<Vec<u8>> {
    let port = port.to_string();
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => anyhow!(REDIS_CLI_MISSING),
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

/// Returns a free TCP port on 127.0.0.1 (never 6379).
///
/// The port is found by binding port 0 and reading the port the kernel chose;
/// the socket is closed again before returning, so another process may grab
/// the port before it is used. [`RedisServer::start`] copes with that by
/// retrying on another port. Within one process the same port is never
/// returned twice.
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
fn free_cluster_port() -> u16 {
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

/// Path of a binary built from this workspace, for integration tests of
/// other crates, e.g. `workspace_bin("ostq")` is `target/debug/ostq`.
///
/// Test executables live in `<target>/<profile>/deps/`, so the binary is
/// looked up next to that `deps` directory, which follows the profile and any
/// `--target` triple. When the current executable's path is unknown, or the
/// binary is not there, `CARGO_TARGET_DIR` (default `target` in the workspace
/// root) plus `debug` is used. The path is returned even if the file does not
/// exist; the binary must have been built (`cargo test` builds a package's
/// binaries before its integration tests; inside the package that owns the
/// binary, `env!("CARGO_BIN_EXE_<name>")` is an alternative).
///
/// ```no_run
/// let ostq = ostq_testkit::workspace_bin("ostq");
/// let status = std::process::Command::new(ostq).arg("--help").status()?;
/// assert!(status.success());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn workspace_bin(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let dir = if dir.file_name() == Some(OsStr::new("deps")) {
            dir.parent()?
        } else {
            dir
        };
        Some(dir.join(&file))
    });
    if let Some(path) = &from_exe {
        if path.exists() {
            return path.clone();
        }
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    let from_env = target_dir.join("debug").join(&file);
    if from_env.exists() {
        return from_env;
    }
    from_exe.unwrap_or(from_env)
}

/// The workspace root: two levels above this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// A private `redis-server` process for one test.
///
/// It listens on 127.0.0.1 on a free port, works in a fresh temporary
/// directory, and does not persist anything unless asked to (`save ""`,
/// `appendonly no`). Dropping it kills the process and removes the directory.
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
    /// Extra arguments given by the user, reused on restart.
    args: Vec<String>,
    /// Removed on drop, after the process is gone.
    dir: tempfile::TempDir,
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
        Self::start_with(&[])
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
        Self::start_on_free_port(args, free_port)
    }

    /// Starts a server on ports from `pick_port`, retrying when the port
    /// turns out to be taken.
    fn start_on_free_port(
        args: &[&str],
        pick_port: impl Fn() -> u16,
    ) -> anyhow::Result<RedisServer> {
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let mut last_error = anyhow!("redis-server was not started");
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("ostq-redis-")
                .tempdir()
                .context("creating a temporary directory for redis-server")?;
            let mut server = RedisServer {
                child: None,
                port: pick_port(),
                args: args.clone(),
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
    /// drop.
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
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let stdout = self.run_cli(&args)?;
        Ok(String::from_utf8_lossy(&stdout).trim().to_owned())
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
        let mut stdout = self.run_cli(&args)?;
        if stdout.last() == Some(&b'\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    fn run_cli(&self, args: &[&OsStr]) -> anyhow::Result<Vec<u8>> {
        run_redis_cli(self.port, args)
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
    /// 10 s) and starts it again on the same port and directory with the same
    /// arguments, then waits for `PING`. Also works after
    /// [`RedisServer::kill`].
    ///
    /// `SHUTDOWN NOSAVE` skips the RDB snapshot but still flushes the AOF, so
    /// a server started with `--appendonly yes` comes back with its data.
    /// Fails if another process took the port while the server was down.
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
            let _ = send_command(self.port, &[b"SHUTDOWN", b"NOSAVE"]);
            let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
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
            .args(&self.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(output_too)
            .spawn()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => StartError::Fatal(anyhow!(REDIS_SERVER_MISSING)),
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
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self.exited() {
                let log = self.log_tail();
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
            match ping(self.port) {
                Ok(reply) if reply.starts_with("+PONG") => match server_pid(self.port) {
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
                // E.g. "-LOADING Redis is loading the dataset in memory".
                Ok(reply) => last = reply,
                Err(error) => last = error.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(anyhow!(
                    "redis-server on port {} did not answer PING within {:?} (last: {last}); log:\n{}",
                    self.port,
                    READY_TIMEOUT,
                    self.log_tail()
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

    /// The last lines of the server's output and log file, for error
    /// messages.
    fn log_tail(&self) -> String {
        [STDERR_FILE, LOG_FILE]
            .iter()
            .filter_map(|file| std::fs::read_to_string(self.dir.path().join(file)).ok())
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            })
            .filter(|tail| !tail.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisServer {
    /// Kills the process and waits for it; the directory is removed after.
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

/// A Redis reply, as far as this crate needs to understand one.
enum Reply {
    /// `+...`, `-...`, `:...`: the line without CRLF, type byte included.
    Line(String),
    /// `$n` bulk string; `None` for nil.
    Bulk(Option<Vec<u8>>),
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&localhost(port), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// Sends an inline `PING` and returns the reply line.
fn ping(port: u16) -> std::io::Result<String> {
    let mut stream = connect(port)?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// Sends one command and reads a reply (simple line or bulk string).
fn send_command(port: u16, args: &[&[u8]]) -> std::io::Result<Reply> {
    let mut stream = connect(port)?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request)?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    if reader.read_line(&mut header)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let header = header.trim_end();
    let Some(len) = header.strip_prefix('$') else {
        return Ok(Reply::Line(header.to_owned()));
    };
    let len: i64 = len
        .parse()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, header.to_owned()))?;
    let Ok(len) = usize::try_from(len) else {
        return Ok(Reply::Bulk(None));
    };
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body)?;
    body.truncate(len);
    Ok(Reply::Bulk(Some(body)))
}

/// Sends a command whose reply is a bulk string of `field:value` lines
/// (`INFO`, `CLUSTER INFO`) and returns the value of `field`.
fn info_field(port: u16, args: &[&[u8]], field: &str) -> anyhow::Result<Option<String>> {
    match send_command(port, args)? {
        Reply::Bulk(Some(body)) => {
            let text = String::from_utf8_lossy(&body);
            let prefix = format!("{field}:");
            Ok(text
                .lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .map(|value| value.trim().to_owned()))
        }
        Reply::Bulk(None) => Ok(None),
        Reply::Line(line) => bail!("unexpected reply: {line}"),
    }
}

/// The process id of the server answering on `port`.
fn server_pid(port: u16) -> anyhow::Result<Option<u32>> {
    Ok(info_field(port, &[b"INFO", b"server"], "process_id")?.and_then(|pid| pid.parse().ok()))
}

/// A Redis Cluster of private `redis-server` processes (masters only).
///
/// Dropping it stops all nodes and removes their directories.
///
/// ```no_run
/// use ostq_testkit::RedisCluster;
///
/// # fn main() -> anyhow::Result<()> {
/// let cluster = RedisCluster::start(3)?;
/// let urls = cluster.urls(); // one "redis://127.0.0.1:PORT" per node
/// assert_eq!(urls.len(), 3);
/// // `-c` makes redis-cli follow MOVED redirects to the right node.
/// cluster.nodes()[0].cli(&["-c", "SET", "a", "1"])?;
/// assert_eq!(cluster.nodes()[1].cli(&["-c", "GET", "a"])?, "1");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) cluster-enabled masters without replicas, each
    /// on a free port below 55000 whose cluster bus port (`port + 10000`) is
    /// free too, joins them with `redis-cli --cluster create ...
    /// --cluster-replicas 0 --cluster-yes`, and waits until every node reports
    /// `cluster_state:ok` and knows all `n` nodes.
    ///
    /// The nodes run with `--cluster-node-timeout 5000`, so a killed node is
    /// noticed by the others after about 5 s.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start(3)?;
    /// assert_eq!(cluster.nodes().len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(n: usize) -> anyhow::Result<RedisCluster> {
        Self::start_with(n, &[])
    }

    /// Like [`RedisCluster::start`], with extra `redis-server` arguments for
    /// every node, appended after the defaults.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start_with(3, &["--appendonly", "yes"])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_with(n: usize, args: &[&str]) -> anyhow::Result<RedisCluster> {
        if n < 3 {
            bail!("a Redis Cluster needs at least 3 masters, got {n}");
        }
        let mut node_args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        node_args.extend_from_slice(args);
        let nodes = (0..n)
            .map(|_| RedisServer::start_on_free_port(&node_args, free_cluster_port))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = RedisCluster { nodes };
        cluster.create()?;
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// Joins the nodes and assigns the slots.
    fn create(&self) -> anyhow::Result<()> {
        let addresses: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => anyhow!(REDIS_CLI_MISSING),
                _ => anyhow::Error::new(error).context("running redis-cli --cluster create"),
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("[OK] All 16384 slots covered") {
            bail!(
                "redis-cli --cluster create {} failed ({}):\n{}\n{}",
                addresses.join(" "),
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Waits until every node reports `cluster_state:ok` and knows all nodes.
    fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let known = self.nodes.len().to_string();
        for node in &self.nodes {
            loop {
                let cluster_info: &[&[u8]] = &[b"CLUSTER", b"INFO"];
                let state = info_field(node.port(), cluster_info, "cluster_state");
                let nodes = info_field(node.port(), cluster_info, "cluster_known_nodes");
                let (state, nodes) = match (state, nodes) {
                    (Ok(state), Ok(nodes)) => (state, nodes),
                    (Err(error), _) | (_, Err(error)) => (Some(error.to_string()), None),
                };
                if state.as_deref() == Some("ok") && nodes.as_deref() == Some(known.as_str()) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "cluster node on port {} not ready within {:?}: cluster_state {:?}, \
                         cluster_known_nodes {:?}",
                        node.port(),
                        CLUSTER_READY_TIMEOUT,
                        state,
                        nodes
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The URL of every node, `redis://127.0.0.1:PORT`, in node order.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start(3)?;
    /// for url in cluster.urls() {
    ///     assert!(url.starts_with("redis://127.0.0.1:"));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, e.g. to run `redis-cli` against one of them.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start(3)?;
    /// let info = cluster.nodes()[0].cli(&["CLUSTER", "INFO"])?;
    /// assert!(info.contains("cluster_state:ok"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably, e.g. to [`kill`](RedisServer::kill) or
    /// [`restart`](RedisServer::restart) one of them.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let mut cluster = ostq_testkit::RedisCluster::start(3)?;
    /// cluster.nodes_mut()[2].restart()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// True if a process with this pid exists (and is not a zombie we own).
    fn process_exists(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Field 3 is the state; "Z" is a zombie.
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    fn pid_of(server: &RedisServer) -> u32 {
        server.child.as_ref().unwrap().id()
    }

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

    #[test]
    fn start_answers_and_cleans_up() {
        let server = RedisServer::start().unwrap();
        let port = server.port();
        assert_ne!(port, 6379);
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
        assert_eq!(server.cli(&["PING"]).unwrap(), "PONG");
        assert_eq!(ping(port).unwrap(), "+PONG");
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
        let server = RedisServer::start_on_free_port(&[], || {
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
        assert!(server.cli(&["PING"]).is_err());
        assert!(server.dir().exists(), "kill must keep the directory");
        server.kill(); // idempotent

        server.restart().unwrap();
        assert_eq!(server.cli(&["GET", "acked"]).unwrap(), "1");
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

    #[test]
    fn cluster_of_three_routes_keys_to_all_nodes() {
        let cluster = RedisCluster::start(3).unwrap();
        assert_eq!(cluster.nodes().len(), 3);
        let urls = cluster.urls();
        assert_eq!(urls.len(), 3);
        for (url, node) in urls.iter().zip(cluster.nodes()) {
            assert_eq!(*url, node.url());
            assert!(node.port() < CLUSTER_PORT_LIMIT);
            let info = node.cli(&["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_state:ok"), "{info}");
            assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
            assert!(info.contains("cluster_known_nodes:3"), "{info}");
        }

        // "a", "b", "c" hash to slots 15495, 3300 and 7365: one per master.
        let keys = ["a", "b", "c"];
        let slots: BTreeSet<String> = keys
            .iter()
            .map(|key| {
                cluster.nodes()[0]
                    .cli(&["CLUSTER", "KEYSLOT", key])
                    .unwrap()
            })
            .collect();
        assert_eq!(slots.len(), 3);
        for key in keys {
            let value = format!("value-of-{key}");
            assert_eq!(
                cluster.nodes()[0].cli(&["-c", "SET", key, &value]).unwrap(),
                "OK"
            );
        }
        for node in cluster.nodes() {
            for key in keys {
                assert_eq!(
                    node.cli(&["-c", "GET", key]).unwrap(),
                    format!("value-of-{key}")
                );
            }
            // Each master holds exactly one of the keys.
            assert_eq!(node.cli(&["DBSIZE"]).unwrap(), "1");
        }

        let pids: Vec<u32> = cluster.nodes().iter().map(pid_of).collect();
        let dirs: Vec<PathBuf> = cluster
            .nodes()
            .iter()
            .map(|node| node.dir().to_path_buf())
            .collect();
        drop(cluster);
        assert!(pids.iter().all(|pid| !process_exists(*pid)));
        assert!(dirs.iter().all(|dir| !dir.exists()));
    }

    #[test]
    fn cluster_needs_three_nodes() {
        assert!(RedisCluster::start(2).is_err());
    }

    #[test]
    fn workspace_bin_points_into_the_target_dir() {
        let path = workspace_bin("ostq");
        assert_eq!(path.file_name(), Some(OsStr::new("ostq")));
        let exe = std::env::current_exe().unwrap();
        // Test binaries are in <target>/<profile>/deps/.
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        if !path.exists() {
            assert_eq!(path.parent(), Some(profile_dir));
        }
    }
}

/// Throw-away TLS material made with the `openssl` command: a CA, a server
/// certificate for `127.0.0.1` and `localhost`, and a client certificate,
/// all signed by that CA (ECDSA P-256, valid for a day). The files live in a
/// temporary directory removed on drop.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// let certs = ostq_testkit::TestCerts::generate()?;
/// let tls_port = ostq_testkit::free_port().to_string();
/// let mut args = vec!["--tls-port", tls_port.as_str()];
/// args.extend(certs.server_args());
/// let redis = ostq_testkit::RedisServer::start_with(&args)?;
/// // connect to rediss://127.0.0.1:{tls_port} trusting certs.ca()
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
    /// The paths as strings, for [`TestCerts::server_args`].
    paths: Vec<String>,
}

impl TestCerts {
    /// Generates the CA and the two certificates; fails if `openssl` is
    /// missing or refuses.
    pub fn generate() -> anyhow::Result<TestCerts> {
        let dir = tempfile::Builder::new()
            .prefix("ostq-certs-")
            .tempdir()
            .context("creating a temporary directory for certificates")?;
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .context("running openssl (is it installed?)")?;
            if !output.status.success() {
                bail!(
                    "openssl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let mut ca = vec!["req", "-x509", "-nodes", "-days", "1"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=ostq test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&ca)?;
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            std::fs::write(
                dir.path().join(&ext),
                format!(
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                     keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
                ),
            )
            .context("writing an openssl extension file")?;
            let mut req = vec!["req", "-nodes"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
            run(&req)?;
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ])?;
        }
        let paths = ["ca.crt", "server.crt", "server.key"]
            .iter()
            .map(|file| dir.path().join(file).display().to_string())
            .collect();
        Ok(TestCerts { dir, paths })
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (PEM), for `127.0.0.1` and `localhost`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A client certificate (PEM) signed by the same CA.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    /// The client certificate's private key (PEM).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// `redis-server` arguments that use these files: `--tls-cert-file`,
    /// `--tls-key-file`, `--tls-ca-cert-file`. Add `--tls-port` (and
    /// `--tls-auth-clients no` unless clients should present a certificate).
    pub fn server_args(&self) -> Vec<&str> {
        let [ca, cert, key] = [0, 1, 2].map(|i| self.paths[i].as_str());
        vec![
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
        ]
    }
}

/// A private Redis Sentinel (`redis-server <conf> --sentinel`) watching one
/// primary, for failover tests. It runs in its own temporary directory on a
/// free port; dropping it kills the process and removes the directory.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use ostq_testkit::{RedisSentinel, RedisServer};
/// let primary = RedisServer::start()?;
/// let port = primary.port().to_string();
/// let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])?;
/// let sentinel = RedisSentinel::start(&primary, "jobs")?;
/// sentinel.wait_for_replicas("jobs", 1, std::time::Duration::from_secs(10))?;
/// sentinel.cli(&["SENTINEL", "FAILOVER", "jobs"])?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts a sentinel that monitors `primary` as service `name` (quorum
    /// 1, down after 1 s, failover timeout 5 s) and waits until it answers
    /// `PING` and knows the primary.
    pub fn start(primary: &RedisServer, name: &str) -> anyhow::Result<RedisSentinel> {
        let mut last_error = anyhow!("redis sentinel was not started");
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("ostq-sentinel-")
                .tempdir()
                .context("creating a temporary directory for redis sentinel")?;
            let port = free_port();
            let config = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {dir}\nlogfile {dir}/{LOG_FILE}\n\
                 sentinel monitor {name} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.path().display(),
                primary = primary.port(),
            );
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(&conf, config).context("writing sentinel.conf")?;
            let output = std::fs::File::create(dir.path().join(STDERR_FILE))
                .context("creating the stderr file of redis sentinel")?;
            let output_too = output.try_clone().context("cloning a file handle")?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(output)
                .stderr(output_too)
                .spawn()
                .map_err(|error| match error.kind() {
                    std::io::ErrorKind::NotFound => anyhow!(REDIS_SERVER_MISSING),
                    _ => anyhow::Error::new(error).context("spawning redis sentinel"),
                })?;
            let mut sentinel = RedisSentinel {
                child: Some(child),
                port,
                dir,
            };
            match sentinel.wait_ready(name) {
                Ok(()) => return Ok(sentinel),
                Err(error) => {
                    let log = sentinel.log_tail();
                    sentinel.kill();
                    if !log.contains("Address already in use") {
                        return Err(error.context(log));
                    }
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    fn wait_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("redis sentinel exited early ({status})");
            }
            let known = send_command(
                self.port,
                &[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", name.as_bytes()],
            );
            // The reply is an array, which `send_command` reports as a line
            // starting with `*2`.
            if matches!(known, Ok(Reply::Line(line)) if line.starts_with("*2")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("redis sentinel on port {} not ready", self.port);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the sentinel lists at least `n` replicas of `name` that
    /// it can promote (not down, link up), so that `SENTINEL FAILOVER` can
    /// pick one.
    pub fn wait_for_replicas(&self, name: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let replicas = self.cli(&["SENTINEL", "REPLICAS", name])?;
            let good = replicas
                .split("\nname\n")
                .filter(|replica| {
                    replica.contains("master-link-status\nok") && replica.contains("flags\nslave\n")
                })
                .count();
            if good >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("sentinel knows {good} good replicas of {name}, wanted {n}:\n{replicas}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sentinel's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the sentinel, for a `redis+sentinel://` URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against the sentinel (see [`RedisServer::cli`]).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let stdout = run_redis_cli(self.port, &args)?;
        Ok(String::from_utf8_lossy(&stdout).trim().to_owned())
    }

    /// The last lines of the sentinel's log, for failure messages.
    pub fn log_tail(&self) -> String {
        [STDERR_FILE, LOG_FILE]
            .iter()
            .filter_map(|file| std::fs::read_to_string(self.dir.path().join(file)).ok())
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.kill();
    }
}
