//! A small blocking RESP2 client for one connection to a Redis on
//! 127.0.0.1: what the test kit uses to check on its servers, and what tests
//! and the chaos suite use to send commands by hand (fault injection,
//! malformed entries, raw reads) without a Redis client library.
//!
//! ```
//! use ostq_testkit::{RedisServer, Reply, Resp};
//!
//! # fn main() -> anyhow::Result<()> {
//! let redis = RedisServer::start()?;
//! let mut resp = Resp::connect(redis.port())?;
//! assert_eq!(resp.command(&["PING"])?, Reply::Status("PONG".into()));
//! assert_eq!(resp.command(&["RPUSH", "l", "a", "b"])?.as_integer(), Some(2));
//! let items = resp.command(&["LRANGE", "l", "0", "-1"])?.into_bytes_list();
//! assert_eq!(items, Some(vec![b"a".to_vec(), b"b".to_vec()]));
//! // Arguments are anything that is bytes: `&str`, `String`, `&[u8]`, `Vec<u8>`.
//! let key: &[u8] = b"bin\xff";
//! resp.command(&[b"SET".as_slice(), key, b"\x00\x01"])?;
//! // Error replies are values; `into_result` turns them into errors.
//! let reply = resp.command(&["NOSUCHCOMMAND"])?;
//! assert!(matches!(&reply, Reply::Error(message) if message.starts_with("ERR")));
//! assert!(reply.into_result().is_err());
//! # Ok(())
//! # }
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::anyhow;

use crate::ports::localhost;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read or a write may take unless [`Resp::set_timeout`] says otherwise.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis reply (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a status line, without the `+`.
    Status(String),
    /// `-ERR ...`: an error reply, without the `-`.
    Error(String),
    /// `:42`: an integer.
    Integer(i64),
    /// `$n`: a bulk string.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`: nil.
    Nil,
    /// `*n`: an array of replies.
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply itself, or an error carrying the message of an error reply.
    pub fn into_result(self) -> anyhow::Result<Reply> {
        match self {
            Reply::Error(message) => Err(anyhow!("redis replied: {message}")),
            reply => Ok(reply),
        }
    }

    /// The value of an integer reply.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Reply::Integer(value) => Some(*value),
            _ => None,
        }
    }

    /// The bytes of a bulk string or a status line.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(bytes) => Some(bytes),
            Reply::Status(line) => Some(line.as_bytes()),
            _ => None,
        }
    }

    /// The bytes of a bulk string or a status line, by value.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Reply::Bulk(bytes) => Some(bytes),
            Reply::Status(line) => Some(line.into_bytes()),
            _ => None,
        }
    }

    /// The items of an array reply.
    pub fn into_array(self) -> Option<Vec<Reply>> {
        match self {
            Reply::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The items of an array of bulk strings (`LRANGE`, `HVALS`, `KEYS`, ...);
    /// `None` if the reply is not an array or an item is not a string.
    pub fn into_bytes_list(self) -> Option<Vec<Vec<u8>>> {
        self.into_array()?
            .into_iter()
            .map(Reply::into_bytes)
            .collect()
    }
}

/// One connection to a Redis on 127.0.0.1, sending commands as RESP arrays
/// and reading replies. Blocking; from async code, call it inside
/// `tokio::task::spawn_blocking`.
#[derive(Debug)]
pub struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    /// Connects to `127.0.0.1:port` (2 s to connect; reads and writes time
    /// out after 2 s, see [`Resp::set_timeout`]).
    pub fn connect(port: u16) -> io::Result<Resp> {
        let stream = TcpStream::connect_timeout(&localhost(port), CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        let mut resp = Resp {
            reader: BufReader::new(stream),
        };
        resp.set_timeout(IO_TIMEOUT)?;
        Ok(resp)
    }

    /// Sets how long one read or write may take, e.g. longer for
    /// `DEBUG SLEEP`, shorter to check that no reply comes.
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))
    }

    /// Sends one command and reads its reply. An error reply is
    /// `Ok(Reply::Error(..))`; `Err` means the connection failed (closed,
    /// timed out, or the reply did not parse).
    pub fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Reply> {
        self.send(args)?;
        self.reply()
    }

    /// Sends one command without reading its reply, for pipelining: read the
    /// replies with [`Resp::reply`], one per command, in order.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<()> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&request)
    }

    /// Reads the next reply.
    pub fn reply(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    /// Sends a command whose reply is a bulk string of `field:value` lines
    /// (`INFO`, `CLUSTER INFO`) and returns the value of `field`, if present.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// let redis = ostq_testkit::RedisServer::start()?;
    /// let mut resp = ostq_testkit::Resp::connect(redis.port())?;
    /// let version = resp.info_field(&["INFO", "server"], "redis_version")?;
    /// assert!(version.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn info_field<A: AsRef<[u8]>>(
        &mut self,
        args: &[A],
        field: &str,
    ) -> anyhow::Result<Option<String>> {
        match self.command(args)? {
            Reply::Bulk(body) => {
                let text = String::from_utf8_lossy(&body);
                let prefix = format!("{field}:");
                Ok(text
                    .lines()
                    .find_map(|line| line.strip_prefix(&prefix))
                    .map(|value| value.trim().to_owned()))
            }
            Reply::Nil => Ok(None),
            other => Err(anyhow!("unexpected reply: {other:?}")),
        }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads a line up to CRLF and returns it without the CRLF.
fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid(format!(
            "reply line without CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_integer(text: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            invalid(format!(
                "not an integer: {:?}",
                String::from_utf8_lossy(text)
            ))
        })
}

/// Reads one reply, arrays included.
fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(reader)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(invalid("empty reply line"));
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Reply::Status(text())),
        b'-' => Ok(Reply::Error(text())),
        b':' => parse_integer(rest).map(Reply::Integer),
        b'$' => {
            let Ok(len) = usize::try_from(parse_integer(rest)?) else {
                return Ok(Reply::Nil);
            };
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            if !body.ends_with(b"\r\n") {
                return Err(invalid("bulk string without CRLF"));
            }
            body.truncate(len);
            Ok(Reply::Bulk(body))
        }
        b'*' => {
            let Ok(len) = usize::try_from(parse_integer(rest)?) else {
                return Ok(Reply::Nil);
            };
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_reply(reader)?);
            }
            Ok(Reply::Array(items))
        }
        _ => Err(invalid(format!(
            "unknown reply type: {:?}",
            String::from_utf8_lossy(&line)
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::RedisServer;

    fn parse(bytes: &[u8]) -> io::Result<Reply> {
        read_reply(&mut &bytes[..])
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Status("OK".into()));
        assert_eq!(
            parse(b"-ERR no\r\n").unwrap(),
            Reply::Error("ERR no".into())
        );
        assert_eq!(parse(b":-7\r\n").unwrap(), Reply::Integer(-7));
        assert_eq!(
            parse(b"$4\r\na\r\nb\r\n").unwrap(),
            Reply::Bulk(b"a\r\nb".to_vec())
        );
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), Reply::Bulk(Vec::new()));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Nil);
        assert_eq!(parse(b"*-1\r\n").unwrap(), Reply::Nil);
        assert_eq!(
            parse(b"*3\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$-1\r\n:5\r\n").unwrap(),
            Reply::Array(vec![
                Reply::Bulk(b"0".to_vec()),
                Reply::Array(vec![Reply::Bulk(b"a".to_vec()), Reply::Nil]),
                Reply::Integer(5),
            ])
        );
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(parse(b"").is_err());
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"+OK\n").is_err());
        assert!(parse(b"$5\r\nab\r\n").is_err());
        assert!(parse(b"*2\r\n:1\r\n").is_err());
    }

    #[test]
    fn accessors() {
        let list = Reply::Array(vec![Reply::Bulk(b"a".to_vec()), Reply::Status("b".into())]);
        assert_eq!(
            list.clone().into_bytes_list(),
            Some(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(
            Reply::Array(vec![Reply::Integer(1)]).into_bytes_list(),
            None
        );
        assert_eq!(list.into_array().map(|items| items.len()), Some(2));
        assert_eq!(Reply::Integer(3).as_integer(), Some(3));
        assert_eq!(Reply::Nil.as_integer(), None);
        assert_eq!(Reply::Bulk(b"x".to_vec()).as_bytes(), Some(&b"x"[..]));
        assert!(Reply::Error("ERR".into()).into_result().is_err());
        assert_eq!(Reply::Nil.into_result().unwrap(), Reply::Nil);
    }

    #[test]
    fn talks_to_a_server() {
        let server = RedisServer::start().unwrap();
        let mut resp = server.resp().unwrap();
        assert_eq!(
            resp.command(&["PING"]).unwrap(),
            Reply::Status("PONG".into())
        );
        let value: &[u8] = b"\xff\x00\r\n binary";
        assert_eq!(
            resp.command(&[b"SET".as_slice(), b"k\xff", value]).unwrap(),
            Reply::Status("OK".into())
        );
        assert_eq!(
            resp.command(&[b"GET".as_slice(), b"k\xff"]).unwrap(),
            Reply::Bulk(value.to_vec())
        );
        assert_eq!(resp.command(&["GET", "missing"]).unwrap(), Reply::Nil);
        // Pipelined: three commands, then three replies in order.
        for _ in 0..3 {
            resp.send(&["INCR", "n"]).unwrap();
        }
        let replies: Vec<Reply> = (0..3).map(|_| resp.reply().unwrap()).collect();
        assert_eq!(
            replies,
            vec![Reply::Integer(1), Reply::Integer(2), Reply::Integer(3)]
        );
        let scan = resp.command(&["SCAN", "0", "COUNT", "100"]).unwrap();
        let [cursor, keys] = <[Reply; 2]>::try_from(scan.into_array().unwrap()).unwrap();
        assert_eq!(cursor, Reply::Bulk(b"0".to_vec()));
        assert_eq!(keys.into_bytes_list().unwrap().len(), 2);
        assert_eq!(
            resp.info_field(&["INFO", "server"], "tcp_port").unwrap(),
            Some(server.port().to_string())
        );
        assert_eq!(
            resp.info_field(&["INFO", "server"], "no_such_field")
                .unwrap(),
            None
        );
        assert!(matches!(
            resp.command(&["NOSUCHCOMMAND"]).unwrap(),
            Reply::Error(message) if message.starts_with("ERR")
        ));
    }

    #[test]
    fn a_slow_reply_times_out_unless_allowed() {
        let server = RedisServer::builder()
            .enable_debug_command()
            .start()
            .unwrap();
        let mut resp = server.resp().unwrap();
        resp.set_timeout(Duration::from_millis(100)).unwrap();
        assert!(resp.command(&["DEBUG", "SLEEP", "0.5"]).is_err());
        let mut resp = server.resp().unwrap();
        resp.set_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            resp.command(&["DEBUG", "SLEEP", "0.3"]).unwrap(),
            Reply::Status("OK".into())
        );
    }
}
