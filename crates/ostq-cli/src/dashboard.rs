//! `ostq dashboard`: serves the web dashboard (the `ostq-web` crate) until ctrl-c or SIGTERM.
//! Without a token it listens on loopback only and answers only loopback host names (against
//! DNS rebinding); with one (`$OSTQ_DASHBOARD_TOKEN` or `--token-file`, never a command-line
//! argument, which other users could read in the process list) it may listen anywhere.

use anyhow::{anyhow, Context};

use crate::cli::{DashboardArgs, Global};
use crate::util::connect;

/// The environment variable holding the token.
const TOKEN_ENV: &str = "OSTQ_DASHBOARD_TOKEN";

/// The token from `--token-file` or `$OSTQ_DASHBOARD_TOKEN` (surrounding whitespace dropped).
fn token(args: &DashboardArgs) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(anyhow!("the token file {} is empty", path.display()));
        }
        return Ok(Some(token));
    }
    Ok(std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

/// `ostq dashboard`.
pub async fn run(global: &Global, args: DashboardArgs) -> anyhow::Result<()> {
    let url = global.redis_url();
    let token = token(&args)?;
    let has_token = token.is_some();
    let mut options = match token {
        Some(token) => ostq_web::Options::with_token(token)?,
        None => ostq_web::Options::without_token().allowed_hosts(ostq_web::LOOPBACK_HOSTS),
    };
    options = options
        .read_only(args.read_only)
        .secure_cookie(args.secure_cookie)
        .redis_url(&url);
    if let Some(base) = &args.base_path {
        options = options.base_path(base.as_str());
    }
    // Refuse an unsafe address before touching Redis, and bind before connecting: the address
    // is the error to report first.
    let listener = ostq_web::bind(args.listen, &options).await?;
    let local = listener.local_addr().unwrap_or(args.listen);
    let client = connect(&url).await?;
    eprintln!(
        "serving the ostq dashboard on http://{local}{}/ (Redis at {}){}{}",
        args.base_path
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/'),
        ostq::connection::redact(&url),
        if has_token {
            ", token required"
        } else {
            ", no token: loopback only"
        },
        if args.read_only { ", read-only" } else { "" },
    );
    ostq_web::serve_on(listener, client, options, shutdown_signal())
        .await
        .map_err(Into::into)
}

/// Resolves at ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
