//! A throw-away redis-server for `ostq demo`: a free port on 127.0.0.1 (never 6379), a
//! temporary directory, no persistence; killed and removed when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: usize = 5;

/// A running private redis-server.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    /// Starts one; fails with an install hint when redis-server is missing.
    pub fn start() -> anyhow::Result<Self> {
        let mut last_err = None;
        for _ in 0..ATTEMPTS {
            match Self::try_start() {
                Ok(server) => return Ok(server),
                Err(e) if e.to_string().contains("not installed") => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("cannot start redis-server")))
    }

    fn try_start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = tempfile::Builder::new()
            .prefix("ostq-demo-redis-")
            .tempdir()
            .context("cannot create a temporary directory for redis-server")?;
        let log = dir.path().join("redis.log");
        let spawned = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "redis-server is not installed: apt-get install redis-server (or run scripts/demo, which does it)"
            ),
            Err(e) => bail!("cannot start redis-server: {e}"),
        };
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ping(port) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                let last = log_text.lines().last().unwrap_or("").to_string();
                bail!("redis-server exited at start ({status}): {last}");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// redis://127.0.0.1:PORT
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot find a free port on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
    bail!("cannot find a free port on 127.0.0.1")
}

fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
