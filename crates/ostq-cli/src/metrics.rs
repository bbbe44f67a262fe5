//! `ostq metrics`: a Prometheus endpoint. Every scrape of `GET /metrics` reads and renders with
//! `ostq_web::prometheus` (the dashboard's `/metrics` serves the same text); this file listens,
//! keeps the time limit and says on stderr when Redis stops or starts answering.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use ostq::Client;
use ostq_web::prometheus::{self, Reading};

use crate::cli::{Global, MetricsArgs};
use crate::util::{check_queue, explain_redis_error, one_line, redact};

/// What the endpoint needs for each scrape.
struct Exporter {
    client: Client,
    /// The queues asked for on the command line; empty: every known queue.
    queues: Vec<String>,
    /// How long one scrape may read Redis before it answers `ostq_redis_up 0`.
    timeout: Duration,
    /// Whether the last scrape reached Redis (to print a line when that changes, not each time).
    up: AtomicBool,
    url: String,
}

/// `ADDR:PORT` for `--listen`: an IP address and a port, or `:PORT` for every interface.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    let full = match t.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => t.to_string(),
    };
    full.parse::<SocketAddr>().map_err(|_| {
        format!("bad address {t:?}: expected IP:PORT such as 127.0.0.1:9808, [::1]:9808 or :9808")
    })
}

/// `ostq metrics`: serves `/metrics` on `--listen` until ctrl-c or SIGTERM.
pub async fn run(global: &Global, args: MetricsArgs) -> anyhow::Result<()> {
    for q in &args.queues {
        check_queue(q)?;
    }
    let url = global.redis_url();
    // Listen first: a port in use is the error to report, whatever Redis is doing.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().unwrap_or(args.listen);
    // Lazy: an exporter starts (and says `ostq_redis_up 0`) while Redis is down.
    let client = Client::connect_lazy(&url)
        .await
        .map_err(|e| explain_redis_error(&url, &e))?;
    let exporter = Arc::new(Exporter {
        client,
        queues: args.queues,
        timeout: args.timeout,
        up: AtomicBool::new(true),
        url,
    });
    // One read now, so a wrong password or an unreachable Redis shows at once on stderr.
    let _ = exporter.read().await;
    eprintln!(
        "serving Prometheus metrics on http://{local}/metrics (Redis at {})",
        redact(&exporter.url)
    );
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(index))
        .with_state(exporter);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the metrics server stopped")
}

/// Resolves at ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn index() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ostq metrics: the Prometheus endpoint is /metrics\n",
    )
}

async fn scrape(State(exporter): State<Arc<Exporter>>) -> impl IntoResponse {
    let started = Instant::now();
    let reading = exporter.read().await.ok();
    let body = prometheus::render(reading.as_ref(), started);
    ([(CONTENT_TYPE, prometheus::CONTENT_TYPE)], body)
}

impl Exporter {
    /// Reads every figure, within the time limit; prints a line on stderr when Redis stops or
    /// starts answering.
    async fn read(&self) -> anyhow::Result<Reading> {
        let result = match tokio::time::timeout(self.timeout, self.read_all()).await {
            Ok(Ok(reading)) => Ok(reading),
            Ok(Err(e)) => Err(explain_redis_error(&self.url, &e)),
            Err(_) => Err(anyhow!(
                "Redis at {} did not answer within {:?}",
                redact(&self.url),
                self.timeout
            )),
        };
        let up = result.is_ok();
        if self.up.swap(up, Ordering::Relaxed) != up {
            match &result {
                Ok(_) => eprintln!("Redis at {} answers again", redact(&self.url)),
                Err(e) => eprintln!(
                    "warning: {}; scrapes say ostq_redis_up 0 until it answers",
                    one_line(&format!("{e:#}"))
                ),
            }
        }
        result
    }

    async fn read_all(&self) -> ostq::Result<Reading> {
        prometheus::read(&self.client, &self.queues).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1:9808"),
            Ok("127.0.0.1:9808".parse().unwrap_or_else(|_| unreachable!()))
        );
        assert_eq!(
            parse_listen(":9808").map(|a| a.port()),
            Ok(9808),
            "a bare port listens everywhere"
        );
        assert!(parse_listen("[::1]:9808").is_ok());
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("127.0.0.1:99999").is_err());
    }
}
