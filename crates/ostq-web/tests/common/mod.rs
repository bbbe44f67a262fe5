//! Helpers of the dashboard's tests: a private redis-server, the dashboard served on a free
//! loopback port, a small HTTP/1.1 client that speaks to it over a real socket, and live workers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use ostq_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A private redis-server and a client connected to it.
pub async fn redis() -> (RedisServer, ostq::Client) {
    let server = RedisServer::start().unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    (server, client)
}

/// A dashboard served on 127.0.0.1 (a free port) until dropped.
pub struct Dashboard {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Dashboard {
    pub async fn start(client: ostq::Client, options: ostq_web::Options) -> Dashboard {
        let listener = ostq_web::bind("127.0.0.1:0".parse().unwrap(), &options)
            .await
            .unwrap();
        Dashboard::serve(listener, ostq_web::router(client, options)).await
    }

    /// Serves any router (the dashboard nested in an app, say).
    pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> Dashboard {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Dashboard {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn client(&self) -> Http {
        Http {
            addr: self.addr,
            host: format!("127.0.0.1:{}", self.addr.port()),
            cookie: None,
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, Vec<String>>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The page's CSRF token (its `csrf-token` meta element).
    pub fn csrf(&self) -> String {
        let needle = r#"name="csrf-token" content=""#;
        let at = self.body.find(needle).expect("a csrf-token meta element");
        let rest = &self.body[at + needle.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// Every value of `attr="…"` in the page, in order (HTML entities of ids left as they are).
    pub fn attrs(&self, attr: &str) -> Vec<String> {
        let needle = format!(r#"{attr}=""#);
        let mut out = Vec::new();
        let mut rest = self.body.as_str();
        while let Some(at) = rest.find(&needle) {
            rest = &rest[at + needle.len()..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        out
    }

    /// The ids of the job rows of a queue page.
    pub fn row_ids(&self) -> Vec<String> {
        self.attrs("data-id")
    }

    /// The href of the element with this id attribute, entities decoded.
    pub fn href_of(&self, id: &str) -> Option<String> {
        let at = self.body.find(&format!(r#"id="{id}""#))?;
        let tag_start = self.body[..at].rfind('<')?;
        let tag = &self.body[tag_start..];
        let href = tag.find(r#"href=""#)?;
        let rest = &tag[href + 6..];
        Some(rest[..rest.find('"')?].replace("&amp;", "&"))
    }
}

/// A tiny HTTP/1.1 client (one connection per request, `Connection: close`) that keeps the
/// session cookie it is given.
#[derive(Clone)]
pub struct Http {
    pub addr: SocketAddr,
    pub host: String,
    pub cookie: Option<String>,
}

impl Http {
    pub async fn get(&mut self, path: &str) -> Answer {
        self.request("GET", path, &[], "").await
    }

    pub async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Answer {
        let body = encode(form);
        let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, &body).await
    }

    /// A request; a `Set-Cookie` of the session in the answer is kept for the next ones.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if has_host {
            head = format!(
                "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        if let Some(cookie) = &self.cookie {
            head.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let answer = parse(&raw);
        for cookie in answer.headers.get("set-cookie").into_iter().flatten() {
            let pair = cookie.split(';').next().unwrap();
            if pair.starts_with("ostq_session=") {
                self.cookie = Some(pair.to_string()).filter(|p| p != "ostq_session=");
            }
        }
        answer
    }
}

fn encode(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters.
pub fn pct(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn parse(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|e| e.eq_ignore_ascii_case("chunked")))
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// A worker running in the background until [`Running::shutdown`].
pub struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<ostq::Result<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

pub fn spawn(worker: ostq::Worker) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run_until(async {
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, handle }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Session-holding client of an open dashboard (its first page gave it a session).
pub async fn open_session(dashboard: &Dashboard) -> (Http, String) {
    let mut http = dashboard.client();
    let page = http.get("/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf();
    (http, csrf)
}
