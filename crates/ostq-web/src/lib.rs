//! # ostq-web: the ostq dashboard
//!
//! An axum [`Router`] that shows an ostq deployment to its operators (queues, counts, throughput,
//! latency, Redis's health, alerts, jobs by state with filters, one job with the error of every
//! attempt, the live workers, the cron and interval schedules, run / wait / total-time histograms
//! per task) and lets them act (pause, resume, rate limits, retry, delete, cancel, in bulk with a
//! confirmation that says how many; remove a schedule). Server-rendered HTML with a little JavaScript, every asset embedded: the
//! page makes no request outside its own origin and works offline. Everything goes through the
//! library's admin API ([`ostq::admin`]).
//!
//! Mount it in your own app under a path of your choosing; links and assets follow the prefix:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ostq::Client::connect("redis://127.0.0.1:6379").await?;
//! let token = std::env::var("OSTQ_DASHBOARD_TOKEN")?;
//! let dashboard = ostq_web::router(client, ostq_web::Options::with_token(token)?);
//! let app = axum::Router::new().nest("/ops/queues", dashboard);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! `ostq dashboard --listen 127.0.0.1:7777` serves it on its own. The security model (token,
//! sessions, CSRF, read-only mode, headers) is described in the `auth` module and
//! `docs/dashboard.md`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use ostq::admin::alerts::AlertRules;
use ostq::admin::StatsSampler;
use ostq::Client;
use tokio::sync::Mutex;

mod actions;
mod api;
mod assets;
mod auth;
mod html;
mod job;
mod metrics_page;
mod overview;
pub mod prometheus;
mod queue;
mod schedules;
mod workers;

pub use auth::SESSION_TTL;

/// The shortest token accepted: long enough that guessing it over HTTP is hopeless.
///
/// ```
/// assert_eq!(ostq_web::MIN_TOKEN_LEN, 16);
/// ```
pub const MIN_TOKEN_LEN: usize = 16;

/// What can go wrong setting the dashboard up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Serving on an address other hosts can reach, without a token.
    #[error(
        "refusing to serve the dashboard on {0} without a token: anyone who can reach that address \
         could see and change every queue; set a token, or listen on 127.0.0.1 / [::1]"
    )]
    NoTokenOffLoopback(SocketAddr),
    /// The token is too short to resist guessing.
    #[error("the dashboard token must be at least {MIN_TOKEN_LEN} characters long")]
    WeakToken,
    /// A setting that does not make sense.
    #[error("{0}")]
    Config(String),
}

/// How the dashboard behaves: its token (or none), read-only mode, and where it is mounted.
///
/// ```
/// let options = ostq_web::Options::with_token("correct-horse-battery-staple")
///     .unwrap()
///     .read_only(true)
///     .redis_url("redis://:secret@10.0.0.5:6379/0");
/// assert!(options.is_read_only());
/// assert!(options.has_token());
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    token: Option<String>,
    read_only: bool,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    base_path: Option<String>,
    redis_label: String,
    secure_cookie: bool,
    page_size: usize,
    search_budget: usize,
    find_budget: u64,
    alert_rules: AlertRules,
}

impl Options {
    fn new(token: Option<String>) -> Self {
        Options {
            token,
            read_only: false,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            base_path: None,
            redis_label: String::new(),
            secure_cookie: false,
            page_size: 50,
            search_budget: ostq::admin::search::DEFAULT_SEARCH_BUDGET,
            find_budget: ostq::admin::lookup::DEFAULT_FIND_BUDGET,
            alert_rules: AlertRules::recommended(),
        }
    }

    /// A dashboard that asks for `token` (at least [`MIN_TOKEN_LEN`] characters): at its login
    /// form, or in an `Authorization: Bearer` header.
    ///
    /// ```
    /// assert!(ostq_web::Options::with_token("short").is_err());
    /// assert!(ostq_web::Options::with_token("a-token-of-24-characters").is_ok());
    /// ```
    pub fn with_token(token: impl Into<String>) -> Result<Self, Error> {
        let token = token.into();
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(Error::WeakToken);
        }
        Ok(Options::new(Some(token)))
    }

    /// A dashboard without a token: for loopback only ([`check_listen`] refuses anything else),
    /// or mounted behind your application's own authentication.
    ///
    /// ```
    /// assert!(!ostq_web::Options::without_token().has_token());
    /// ```
    pub fn without_token() -> Self {
        Options::new(None)
    }

    /// Hides every action and answers 405 to every request that would change something.
    ///
    /// ```
    /// assert!(ostq_web::Options::without_token().read_only(true).is_read_only());
    /// ```
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Answers only requests whose `Host` is one of these names (any port), against DNS
    /// rebinding; empty (the default) answers any. `ostq dashboard` sets the loopback names when
    /// it runs without a token.
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().allowed_hosts(["localhost", "127.0.0.1"]);
    /// # let _ = options;
    /// ```
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Origins (`https://ops.example.com`) whose pages may post, besides the request's own
    /// `Host`: for a proxy that rewrites `Host`.
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().allowed_origins(["https://ops.example.com"]);
    /// # let _ = options;
    /// ```
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// The path the browser sees the dashboard at, when a proxy strips it before the request
    /// reaches the router (`/ops/queues`). Without it the prefix of [`Router::nest`] is found
    /// by itself.
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().base_path("/ops/queues/");
    /// # let _ = options;
    /// ```
    pub fn base_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        let trimmed = path.trim_end_matches('/');
        self.base_path = Some(if trimmed.starts_with('/') || trimmed.is_empty() {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        });
        self
    }

    /// The Redis URL to show in the header; its password is never shown
    /// ([`ostq::connection::redact`]).
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().redis_url("redis://:pw@h:6379");
    /// # let _ = options;
    /// ```
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_label = ostq::connection::redact(url);
        self
    }

    /// Marks the session cookie `Secure` (served over HTTPS, directly or behind a proxy).
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().secure_cookie(true);
    /// # let _ = options;
    /// ```
    pub fn secure_cookie(mut self, secure: bool) -> Self {
        self.secure_cookie = secure;
        self
    }

    /// Jobs per page of a listing (1..=1000; default 50).
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().page_size(100);
    /// # let _ = options;
    /// ```
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = size.clamp(1, 1000);
        self
    }

    /// Jobs one filter request examines at most (default
    /// [`ostq::admin::search::DEFAULT_SEARCH_BUDGET`]).
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().search_budget(20_000);
    /// # let _ = options;
    /// ```
    pub fn search_budget(mut self, budget: usize) -> Self {
        self.search_budget = budget.clamp(1, ostq::admin::search::MAX_SEARCH_BUDGET);
        self
    }

    /// Entries of a pending list one job page (or find by id) reads at most while looking for a
    /// job that a listing did not point to (default
    /// [`ostq::admin::lookup::DEFAULT_FIND_BUDGET`]); the page then offers to look further.
    ///
    /// ```
    /// let options = ostq_web::Options::without_token().find_budget(50_000);
    /// # let _ = options;
    /// ```
    pub fn find_budget(mut self, entries: u64) -> Self {
        self.find_budget = entries.max(1);
        self
    }

    /// The thresholds behind the overview's alert banners (default
    /// [`AlertRules::recommended`]).
    ///
    /// ```
    /// let rules = ostq::admin::alerts::AlertRules { max_dead: Some(100), ..Default::default() };
    /// let options = ostq_web::Options::without_token().alert_rules(rules);
    /// # let _ = options;
    /// ```
    pub fn alert_rules(mut self, rules: AlertRules) -> Self {
        self.alert_rules = rules;
        self
    }

    /// Whether a token is required.
    ///
    /// ```
    /// assert!(!ostq_web::Options::without_token().has_token());
    /// ```
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether actions are hidden and refused.
    ///
    /// ```
    /// assert!(!ostq_web::Options::without_token().is_read_only());
    /// ```
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

/// Checks that serving on `addr` with these options is safe: without a token, only a loopback
/// address is accepted.
///
/// ```
/// let open = ostq_web::Options::without_token();
/// assert!(ostq_web::check_listen("127.0.0.1:7777".parse().unwrap(), &open).is_ok());
/// assert!(ostq_web::check_listen("0.0.0.0:7777".parse().unwrap(), &open).is_err());
/// let guarded = ostq_web::Options::with_token("a-token-of-24-characters").unwrap();
/// assert!(ostq_web::check_listen("0.0.0.0:7777".parse().unwrap(), &guarded).is_ok());
/// ```
pub fn check_listen(addr: SocketAddr, options: &Options) -> Result<(), Error> {
    if options.token.is_none() && !addr.ip().is_loopback() {
        return Err(Error::NoTokenOffLoopback(addr));
    }
    Ok(())
}

/// The loopback host names, for [`Options::allowed_hosts`] on a dashboard without a token.
///
/// ```
/// assert!(ostq_web::LOOPBACK_HOSTS.contains(&"localhost"));
/// ```
pub const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// Binds `addr` after [`check_listen`], and serves the dashboard there until `shutdown`
/// resolves.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let addr = "127.0.0.1:7777".parse()?;
/// let options = ostq_web::Options::without_token().allowed_hosts(ostq_web::LOOPBACK_HOSTS);
/// ostq_web::serve(addr, client, options, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn serve(
    addr: SocketAddr,
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = bind(addr, &options).await?;
    serve_on(listener, client, options, shutdown).await
}

/// Binds `addr` after [`check_listen`] (to learn the port before serving, say).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let options = ostq_web::Options::without_token();
/// let listener = ostq_web::bind("127.0.0.1:0".parse()?, &options).await?;
/// println!("port {}", listener.local_addr()?.port());
/// # Ok(()) }
/// ```
pub async fn bind(
    addr: SocketAddr,
    options: &Options,
) -> Result<tokio::net::TcpListener, ServeError> {
    check_listen(addr, options)?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves the dashboard on a listener bound by [`bind`] until `shutdown` resolves.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let options = ostq_web::Options::without_token();
/// let listener = ostq_web::bind("127.0.0.1:0".parse()?, &options).await?;
/// ostq_web::serve_on(listener, client, options, std::future::pending()).await?;
/// # Ok(()) }
/// ```
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    client: Client,
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Serve { source })?;
    check_listen(addr, &options)?;
    axum::serve(listener, router(client, options))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Serve { source })
}

/// What can stop [`serve`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The options are unsafe for the address (see [`check_listen`]).
    #[error(transparent)]
    Setup(#[from] Error),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("the dashboard server stopped: {source}")]
    Serve {
        /// Why.
        source: std::io::Error,
    },
}

/// What every page and action shares.
pub(crate) struct App {
    pub(crate) client: Client,
    pub(crate) options: Options,
    pub(crate) keys: auth::Keys,
    /// One sampler for every viewer, so jobs/s is measured between successive looks.
    pub(crate) sampler: Mutex<StatsSampler>,
}

/// What a page needs to know about the request it answers (set by [`auth::guard`]).
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    /// The path the dashboard is mounted at (`""` at the root, else `/prefix`).
    pub(crate) base: String,
    /// The session's CSRF token, for forms.
    pub(crate) csrf: String,
    pub(crate) read_only: bool,
    /// The Redis URL, password hidden.
    pub(crate) redis_label: String,
    /// Logged in with the token through the form (so a logout button makes sense).
    pub(crate) can_log_out: bool,
    /// Let in (false only on the login page and assets without a session).
    pub(crate) authenticated: bool,
}

impl Ctx {
    /// The overview's URL: the mount point itself (`/prefix`, or `/` at the root). A router
    /// nested at `/prefix` answers `/prefix`, not `/prefix/`.
    pub(crate) fn home(&self) -> String {
        if self.base.is_empty() {
            "/".to_string()
        } else {
            self.base.clone()
        }
    }
}

/// The dashboard as an axum [`Router`], to serve as it is or mount with [`Router::nest`].
///
/// ```no_run
/// # async fn demo(client: ostq::Client) {
/// let dashboard = ostq_web::router(client, ostq_web::Options::without_token());
/// let app: axum::Router = axum::Router::new().nest("/queues", dashboard);
/// # let _ = app;
/// # }
/// ```
pub fn router(client: Client, options: Options) -> Router {
    let keys = auth::Keys::new(options.token.as_deref());
    let sampler = Mutex::new(StatsSampler::new(&client).window(std::time::Duration::from_secs(60)));
    let app = Arc::new(App {
        client,
        options,
        keys,
        sampler,
    });
    Router::new()
        .route("/", get(overview::page))
        .route("/workers", get(workers::page))
        .route("/schedules", get(schedules::page))
        .route("/schedules/remove", post(schedules::remove))
        .route("/metrics-page", get(metrics_page::page))
        .route("/queues/{queue}", get(queue::page))
        .route("/queues/{queue}/pause", post(actions::pause))
        .route("/queues/{queue}/resume", post(actions::resume))
        .route("/queues/{queue}/rate-limit", post(actions::rate_limit))
        .route("/queues/{queue}/bulk", post(actions::bulk))
        .route("/queues/{queue}/jobs/{id}", get(job::page))
        .route(
            "/queues/{queue}/jobs/{id}/{action}",
            post(actions::job_action),
        )
        .route("/api/overview", get(api::overview))
        .route("/api/totals", get(api::totals))
        .route("/api/queues/{queue}/search", get(api::search))
        .route("/metrics", get(prometheus::serve))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/assets/{file}", get(assets::serve))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::guard,
        ))
        .with_state(app)
}

async fn not_found(axum::Extension(ctx): axum::Extension<Ctx>) -> axum::response::Response {
    pages::error(&ctx, axum::http::StatusCode::NOT_FOUND, "No such page.")
}

/// Error pages shared by the pages and actions.
pub(crate) mod pages {
    use axum::http::StatusCode;
    use axum::response::{Html, IntoResponse, Response};

    use crate::html::{self, esc, Nav};
    use crate::Ctx;

    /// A page that says what went wrong.
    pub(crate) fn error(ctx: &Ctx, status: StatusCode, message: &str) -> Response {
        let body = format!(
            r#"<h1>{}</h1><p class="banner error" role="alert">{}</p><p><a href="{}">Back to the overview</a></p>"#,
            status.as_u16(),
            esc(message),
            esc(&ctx.home())
        );
        (status, Html(html::page(ctx, "Error", Nav::None, &body))).into_response()
    }

    /// An error of the library, as a page: bad input is the operator's (400), the rest is
    /// Redis's (502).
    pub(crate) fn library_error(ctx: &Ctx, err: &ostq::Error) -> Response {
        tracing::warn!(error = %err, "dashboard: admin API call failed");
        let status = match err {
            ostq::Error::Config(_) => StatusCode::BAD_REQUEST,
            ostq::Error::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_GATEWAY,
        };
        error(ctx, status, &err.to_string())
    }
}
