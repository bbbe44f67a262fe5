//! Who may see the dashboard and who may change anything: the token, sessions, and the checks
//! every request passes through ([`guard`]) before any page or action runs.
//!
//! - **Token**: with a token set, a request is let in with a valid session cookie (given by
//!   `POST /login` for the right token) or an `Authorization: Bearer <token>` header. Tokens are
//!   compared in constant time (their SHA-256 digests). Without a token everyone is let in: for
//!   loopback only, or behind an application's own authentication. The token never appears in a
//!   URL, so it cannot leak into access logs, history or `Referer`.
//! - **Sessions** are stateless: `<issued>.<nonce>.<mac>`, an HMAC-SHA256 of a key derived from
//!   the token (so they survive restarts and work across replicas), valid [`SESSION_TTL`]. Without
//!   a token the key is random per router and every visitor gets a session, which the CSRF token
//!   hangs off.
//! - **CSRF**: only `POST` changes anything. Every `POST` is refused unless `Sec-Fetch-Site`
//!   (when sent) is `same-origin` and `Origin` (when sent) names this host; a `POST` made with a
//!   session cookie must also carry the session's CSRF token (`csrf` form field or `X-CSRF-Token`
//!   header), an HMAC of the session nonce. A `POST` authenticated by the `Authorization` header
//!   needs no CSRF token: a browser never adds that header by itself.
//! - **Host**: when [`crate::Options::allowed_hosts`] is set (the CLI sets it on loopback without
//!   a token), a request for another `Host` is refused, which stops DNS rebinding.
//! - **Read-only**: every mutation answers 405.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequest, OriginalUri, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HOST, LOCATION,
    ORIGIN, SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::html::{self, esc, Nav};
use crate::{App, Ctx};

type HmacSha256 = Hmac<Sha256>;

/// How long a session stays valid after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "ostq_session";

/// The largest form body read (bulk forms carry up to 10,000 ids).
pub(crate) const MAX_FORM_BYTES: usize = 4 * 1024 * 1024;

/// The Content-Security-Policy of every answer: nothing but this origin's own files, no inline
/// script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The secrets of one router: the key sessions and CSRF tokens are MACs of, and the token's
/// digest.
pub(crate) struct Keys {
    mac_key: [u8; 32],
    token_digest: Option<[u8; 32]>,
}

impl Keys {
    pub(crate) fn new(token: Option<&str>) -> Self {
        match token {
            Some(token) => {
                let mut mac = HmacSha256::new_from_slice(token.as_bytes())
                    .unwrap_or_else(|_| unreachable_hmac());
                mac.update(b"ostq-web session key v1");
                Keys {
                    mac_key: mac.finalize().into_bytes().into(),
                    token_digest: Some(Sha256::digest(token.as_bytes()).into()),
                }
            }
            None => {
                let mut mac_key = [0u8; 32];
                rand::rng().fill_bytes(&mut mac_key);
                Keys {
                    mac_key,
                    token_digest: None,
                }
            }
        }
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token_digest.is_some()
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(&self.mac_key).unwrap_or_else(|_| unreachable_hmac());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `given` is the token, compared in constant time (digests, so the length of the
    /// token does not leak either).
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        let Some(expected) = &self.token_digest else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(given.ct_eq(expected))
    }

    /// A new session cookie value, issued at `now_secs`.
    pub(crate) fn new_session(&self, now_secs: u64) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = hex(&nonce);
        let issued = now_secs.to_string();
        let mac = hex(&self.mac(&[b"session", issued.as_bytes(), nonce.as_bytes()]));
        format!("{issued}.{nonce}.{mac}")
    }

    /// The nonce of a valid, unexpired session cookie value.
    pub(crate) fn verify_session<'v>(&self, value: &'v str, now_secs: u64) -> Option<&'v str> {
        let mut parts = value.split('.');
        let (issued, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expected = hex(&self.mac(&[b"session", issued.as_bytes(), nonce.as_bytes()]));
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let issued: u64 = issued.parse().ok()?;
        let fresh =
            issued <= now_secs + 60 && now_secs - issued.min(now_secs) < SESSION_TTL.as_secs();
        fresh.then_some(nonce)
    }

    /// The CSRF token of a session (by its nonce).
    pub(crate) fn csrf(&self, nonce: &str) -> String {
        hex(&self.mac(&[b"csrf", nonce.as_bytes()]))
    }

    fn csrf_matches(&self, nonce: &str, given: &str) -> bool {
        let expected = self.csrf(nonce);
        bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// HMAC-SHA256 takes keys of any length: this cannot happen.
fn unreachable_hmac() -> HmacSha256 {
    unreachable!("HMAC-SHA256 accepts keys of any length")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn now_secs() -> u64 {
    html::now_ms() / 1000
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value of a session, scoped to the dashboard's path.
fn session_cookie(app: &App, base: &str, value: &str, max_age: u64) -> String {
    let secure = if app.options.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    // `Path=/prefix` covers `/prefix` and everything under it.
    let path = if base.is_empty() { "/" } else { base };
    format!("{SESSION_COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The host (and port) a request was sent to, from `Host`.
fn request_host(headers: &HeaderMap) -> Option<&str> {
    headers.get(HOST).and_then(|v| v.to_str().ok())
}

/// The host name of a `Host` value, without the port (IPv6 in brackets kept).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether the request's `Host` is one the dashboard answers (any, unless a list is set).
fn host_allowed(app: &App, headers: &HeaderMap) -> bool {
    let allowed = &app.options.allowed_hosts;
    if allowed.is_empty() {
        return true;
    }
    request_host(headers)
        .map(host_name)
        .is_some_and(|name| allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

/// Whether a `POST` comes from a page of this very origin, as far as the browser says: the
/// `Sec-Fetch-Site` and `Origin` headers, when present, must agree.
fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return false;
        }
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return true; // not a browser, or an old one: the CSRF token still decides
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if app
        .options
        .allowed_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((_, authority)) = origin.split_once("://") else {
        return false; // "null" (sandboxed frames, file: pages) and nonsense
    };
    request_host(headers).is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The path the dashboard is mounted at: the original path minus what the router saw, unless
/// [`crate::Options::base_path`] says otherwise (behind a proxy that strips a prefix).
fn base_path(app: &App, original: &OriginalUri, seen_path: &str) -> String {
    if let Some(base) = &app.options.base_path {
        return base.clone();
    }
    let full = original.0.path();
    let base = match full.strip_suffix(seen_path) {
        Some(base) => base,
        // `/prefix` itself reaches the nested router as `/`.
        None if seen_path == "/" => full,
        None => "",
    };
    base.trim_end_matches('/').to_string()
}

/// How a request was let in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// A session cookie (given now or before).
    Session,
    /// `Authorization: Bearer`.
    Header,
    /// Not at all (only the login page and the assets).
    Nobody,
}

/// Every request passes here first: host, authentication, read-only, CSRF; then the page or
/// action runs with a [`Ctx`], and the answer gets the security headers.
pub(crate) async fn guard(
    State(app): State<Arc<App>>,
    original: OriginalUri,
    request: Request,
    next: Next,
) -> Response {
    let mut response = guarded(app, original, request, next).await;
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn guarded(app: Arc<App>, original: OriginalUri, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let base = base_path(&app, &original, &path);
    let headers = request.headers();
    tracing::debug!(method = %request.method(), path = %path, "dashboard request");
    if !host_allowed(&app, headers) {
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard does not answer for that host name",
        );
    }
    let is_post = request.method() == Method::POST;
    let public = path.starts_with("/assets/") || path == "/login";
    let now = now_secs();

    // Who is asking.
    let mut via = Via::Nobody;
    let mut nonce = cookie(headers, SESSION_COOKIE)
        .and_then(|value| app.keys.verify_session(value, now))
        .map(str::to_string);
    if nonce.is_some() {
        via = Via::Session;
    } else if bearer(headers).is_some_and(|t| app.keys.token_matches(t)) {
        via = Via::Header;
    }
    let mut new_cookie = None;
    if via == Via::Nobody && !app.keys.has_token() {
        // Open dashboard: everyone gets a session, for the CSRF token to hang off.
        let value = app.keys.new_session(now);
        nonce = app.keys.verify_session(&value, now).map(str::to_string);
        new_cookie = Some(session_cookie(&app, &base, &value, SESSION_TTL.as_secs()));
        via = Via::Session;
    }
    if via == Via::Nobody && !public {
        return unauthorized(&app, &base, &path, false);
    }

    let mut request = request;
    if is_post {
        if app.options.read_only && path != "/login" && path != "/logout" {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "this dashboard is read-only: nothing can be changed from it",
            );
        }
        if !same_origin(&app, request.headers()) {
            return plain(
                StatusCode::FORBIDDEN,
                "refused: this request did not come from a page of this dashboard (cross-site request)",
            );
        }
        // The login form has no session yet; everything else posted with a cookie needs the
        // session's CSRF token.
        if via == Via::Session && path != "/login" {
            let Some(nonce) = nonce.as_deref() else {
                return plain(StatusCode::FORBIDDEN, "refused: no session");
            };
            let (parts, body) = request.into_parts();
            let bytes = match to_bytes(body, MAX_FORM_BYTES).await {
                Ok(bytes) => bytes,
                Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large"),
            };
            let header_token = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let form_token = form_urlencoded::parse(&bytes)
                .find(|(key, _)| key == "csrf")
                .map(|(_, value)| value.into_owned());
            let given = header_token.or(form_token).unwrap_or_default();
            if !app.keys.csrf_matches(nonce, &given) {
                return plain(
                    StatusCode::FORBIDDEN,
                    "refused: the form's CSRF token is missing or stale; reload the page and try again",
                );
            }
            request = Request::from_parts(parts, Body::from(bytes));
        }
    }

    let ctx = Ctx {
        csrf: nonce
            .as_deref()
            .map(|n| app.keys.csrf(n))
            .unwrap_or_default(),
        base: base.clone(),
        read_only: app.options.read_only,
        redis_label: app.options.redis_label.clone(),
        can_log_out: app.keys.has_token() && via == Via::Session,
        authenticated: via != Via::Nobody,
    };
    request.extensions_mut().insert(ctx);
    let mut response = next.run(request).await;
    if let Some(cookie) = new_cookie {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

/// A short text answer.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// 401: the login form for pages, a JSON error for the API.
fn unauthorized(app: &App, base: &str, path: &str, wrong: bool) -> Response {
    let mut response = if path.starts_with("/api/") {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "a token is required"})),
        )
            .into_response()
    } else {
        let ctx = Ctx {
            csrf: String::new(),
            base: base.to_string(),
            read_only: app.options.read_only,
            redis_label: String::new(),
            can_log_out: false,
            authenticated: false,
        };
        (
            StatusCode::UNAUTHORIZED,
            axum::response::Html(login_page(&ctx, wrong)),
        )
            .into_response()
    };
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ostq dashboard\""),
    );
    response
}

fn login_page(ctx: &Ctx, wrong: bool) -> String {
    let error = if wrong {
        r#"<p class="banner error" role="alert">That token is not the dashboard's token.</p>"#
    } else {
        ""
    };
    let body = format!(
        r#"<section class="login">
<h1>Log in</h1>
{error}
<p>This dashboard needs its token (<code>ostq dashboard --token-file</code> or <code>$OSTQ_DASHBOARD_TOKEN</code>).</p>
<form method="post" action="{base}/login">
<label for="token">Token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form>
</section>"#,
        base = esc(&ctx.base)
    );
    html::page(ctx, "Log in", Nav::None, &body)
}

/// `GET /login`: the form (or the overview when already in).
pub(crate) async fn login_form(
    State(app): State<Arc<App>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    if ctx.authenticated && (!app.keys.has_token() || ctx.can_log_out) {
        return see_other(&ctx.home());
    }
    axum::response::Html(login_page(&ctx, false)).into_response()
}

/// `POST /login`: checks the token; on success a session cookie and the overview.
pub(crate) async fn login(
    State(app): State<Arc<App>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    form: Fields,
) -> Response {
    if !app.keys.has_token() {
        return see_other(&ctx.home());
    }
    let given = form.get("token").unwrap_or_default();
    if !app.keys.token_matches(given) {
        // Slows guessing down a little; the token's length does the real work.
        tokio::time::sleep(Duration::from_millis(250)).await;
        tracing::warn!("dashboard login with a wrong token");
        return unauthorized(&app, &ctx.base, "/login", true);
    }
    let value = app.keys.new_session(now_secs());
    let mut response = see_other(&ctx.home());
    let cookie = session_cookie(&app, &ctx.base, &value, SESSION_TTL.as_secs());
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: forgets the session cookie.
pub(crate) async fn logout(
    State(app): State<Arc<App>>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let mut response = see_other(&format!("{}/login", ctx.base));
    let cookie = session_cookie(&app, &ctx.base, "", 0);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// 303 to `location` (after a form, the browser loads it with GET).
pub(crate) fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// A form body's fields, in order, repeated keys kept (`id=a&id=b`).
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = Response;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = to_bytes(request.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| plain(StatusCode::PAYLOAD_TOO_LARGE, "form too large"))?;
        Ok(Fields(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_only_with_their_key_and_expire() {
        let keys = Keys::new(Some("a-long-enough-token"));
        let session = keys.new_session(1_000_000);
        assert!(keys.verify_session(&session, 1_000_010).is_some());
        assert!(keys
            .verify_session(&session, 1_000_000 + SESSION_TTL.as_secs())
            .is_none());
        let other = Keys::new(Some("another-long-token"));
        assert!(other.verify_session(&session, 1_000_010).is_none());
        let tampered = session.replacen('1', "2", 1);
        assert!(keys.verify_session(&tampered, 1_000_010).is_none());
        let nonce = keys.verify_session(&session, 1_000_010).unwrap_or_default();
        assert!(keys.csrf_matches(nonce, &keys.csrf(nonce)));
        assert!(!keys.csrf_matches(nonce, ""));
        assert!(keys.token_matches("a-long-enough-token"));
        assert!(!keys.token_matches("a-long-enough-token "));
        assert!(!Keys::new(None).token_matches(""));
    }

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:7777"), "127.0.0.1");
        assert_eq!(host_name("[::1]:7777"), "[::1]");
        assert_eq!(host_name("localhost"), "localhost");
    }
}
