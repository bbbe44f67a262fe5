//! The dashboard's security over real HTTP: the token, sessions, loopback rules, host names,
//! CSRF (token, Origin, Sec-Fetch-Site), read-only mode, and the headers every answer carries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{open_session, redis, Dashboard, TOKEN};

#[tokio::test]
async fn a_token_is_required_and_checked() {
    let (_server, client) = redis().await;
    client.queue("videos").push("42").await.unwrap();
    let options = ostq_web::Options::with_token(TOKEN).unwrap();
    let dashboard = Dashboard::start(client, options).await;
    let mut http = dashboard.client();

    for path in [
        "/",
        "/workers",
        "/queues/videos",
        "/api/overview",
        "/api/totals",
        "/metrics",
    ] {
        let answer = http.get(path).await;
        assert_eq!(answer.status, 401, "{path} without a token");
        assert!(
            !answer.body.contains("videos"),
            "{path} leaks data: {}",
            answer.body
        );
        assert!(answer.header("www-authenticate").is_some());
    }
    // The login form and the assets are public.
    assert_eq!(http.get("/assets/app.css").await.status, 200);
    assert!(http.get("/").await.body.contains(r#"name="token""#));

    // A wrong token, by header or by the form.
    let wrong = format!("Bearer {TOKEN}x");
    let answer = http
        .request("GET", "/", &[("Authorization", &wrong)], "")
        .await;
    assert_eq!(answer.status, 401);
    let answer = http
        .post("/login", &[("token", "wrong-token-0123456789")], &[])
        .await;
    assert_eq!(answer.status, 401);
    assert!(answer.body.contains("not the dashboard"));
    assert!(http.cookie.is_none(), "no session for a wrong token");

    // The right token by header: in, no cookie needed.
    let bearer = format!("Bearer {TOKEN}");
    let answer = http
        .request("GET", "/", &[("Authorization", &bearer)], "")
        .await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("videos"));
    // Prometheus scrapes /metrics with the same header: the text of `ostq metrics`.
    let answer = http
        .request("GET", "/metrics", &[("Authorization", &bearer)], "")
        .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.contains("version=0.0.4")),
        "{answer:?}"
    );
    assert!(answer.body.contains("ostq_redis_up 1"), "{}", answer.body);
    assert!(
        answer
            .body
            .contains(r#"ostq_queue_jobs{queue="videos",state="pending"}"#),
        "{}",
        answer.body
    );

    // The right token by the form: a session cookie, HttpOnly and SameSite=Strict.
    let answer = http.post("/login", &[("token", TOKEN)], &[]).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let cookie = answer.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let answer = http.get("/queues/videos").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("Log out"));

    // A forged cookie is no session.
    let mut forged = dashboard.client();
    forged.cookie = Some("ostq_session=1.00.00".into());
    assert_eq!(forged.get("/").await.status, 401);

    // Logging out forgets the session.
    let csrf = http.get("/").await.csrf();
    let answer = http.post("/logout", &[("csrf", &csrf)], &[]).await;
    assert_eq!(answer.status, 303);
    assert!(http.cookie.is_none());
    assert_eq!(http.get("/").await.status, 401);
}

#[tokio::test]
async fn without_a_token_only_loopback_is_served() {
    let open = ostq_web::Options::without_token();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let err = ostq_web::bind(addr.parse().unwrap(), &open)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("without a token"), "{err}");
    }
    assert!(ostq_web::check_listen("127.0.0.1:7777".parse().unwrap(), &open).is_ok());
    assert!(ostq_web::check_listen("[::1]:7777".parse().unwrap(), &open).is_ok());
    let guarded = ostq_web::Options::with_token(TOKEN).unwrap();
    assert!(ostq_web::check_listen("0.0.0.0:7777".parse().unwrap(), &guarded).is_ok());
    assert!(matches!(
        ostq_web::Options::with_token("short"),
        Err(ostq_web::Error::WeakToken)
    ));

    // On loopback, no token: in at once.
    let (_server, client) = redis().await;
    client.queue("videos").push("42").await.unwrap();
    let options = ostq_web::Options::without_token().allowed_hosts(ostq_web::LOOPBACK_HOSTS);
    let dashboard = Dashboard::start(client, options).await;
    let mut http = dashboard.client();
    let answer = http.get("/").await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("videos"));
    // Another host name (DNS rebinding) is refused.
    let answer = http
        .request("GET", "/", &[("Host", "attacker.example:7777")], "")
        .await;
    assert_eq!(answer.status, 421);
    assert!(!answer.body.contains("videos"));
    let answer = http
        .request("GET", "/", &[("Host", "localhost:7777")], "")
        .await;
    assert_eq!(answer.status, 200);
}

/// What a POST that must be refused leaves behind: the queue not paused.
async fn assert_not_paused(client: &ostq::Client) {
    assert!(!client.queue("videos").counts().await.unwrap().paused);
}

#[tokio::test]
async fn every_change_needs_the_csrf_token_and_this_origin() {
    let (_server, client) = redis().await;
    client.queue("videos").push("42").await.unwrap();
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, csrf) = open_session(&dashboard).await;
    let here = format!("http://{}", http.host);

    // No token, a wrong one, another session's.
    let answer = http.post("/queues/videos/pause", &[], &[]).await;
    assert_eq!(answer.status, 403);
    let answer = http
        .post("/queues/videos/pause", &[("csrf", "0123")], &[])
        .await;
    assert_eq!(answer.status, 403);
    let (_, other_csrf) = open_session(&dashboard).await;
    let answer = http
        .post("/queues/videos/pause", &[("csrf", &other_csrf)], &[])
        .await;
    assert_eq!(answer.status, 403);
    // The right token from another site.
    let answer = http
        .post(
            "/queues/videos/pause",
            &[("csrf", &csrf)],
            &[("Origin", "https://attacker.example")],
        )
        .await;
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("cross-site"));
    let answer = http
        .post(
            "/queues/videos/pause",
            &[("csrf", &csrf)],
            &[("Sec-Fetch-Site", "cross-site")],
        )
        .await;
    assert_eq!(answer.status, 403);
    let answer = http
        .post(
            "/queues/videos/pause",
            &[("csrf", &csrf)],
            &[("Origin", "null")],
        )
        .await;
    assert_eq!(answer.status, 403);
    // Without a session at all.
    let mut stranger = dashboard.client();
    let answer = stranger
        .post("/queues/videos/pause", &[("csrf", &csrf)], &[])
        .await;
    assert_eq!(answer.status, 403);
    // GET never changes anything.
    assert_eq!(http.get("/queues/videos/pause").await.status, 405);
    assert_not_paused(&client).await;

    // The right token, from this origin: done.
    let answer = http
        .post(
            "/queues/videos/pause",
            &[("csrf", &csrf)],
            &[("Origin", &here), ("Sec-Fetch-Site", "same-origin")],
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert!(client.queue("videos").counts().await.unwrap().paused);
}

#[tokio::test]
async fn with_a_token_a_post_needs_the_session_csrf_token_or_the_header() {
    let (_server, client) = redis().await;
    client.queue("videos").push("42").await.unwrap();
    let options = ostq_web::Options::with_token(TOKEN).unwrap();
    let dashboard = Dashboard::start(client.clone(), options).await;
    let mut http = dashboard.client();
    // Not logged in: refused whatever the form says.
    let answer = http
        .post("/queues/videos/pause", &[("csrf", "x")], &[])
        .await;
    assert_eq!(answer.status, 401);
    // A login from another site is refused too.
    let answer = http
        .post(
            "/login",
            &[("token", TOKEN)],
            &[("Origin", "https://attacker.example")],
        )
        .await;
    assert_eq!(answer.status, 403);
    assert!(http.cookie.is_none());
    http.post("/login", &[("token", TOKEN)], &[]).await;
    let answer = http.post("/queues/videos/pause", &[], &[]).await;
    assert_eq!(answer.status, 403, "a session without the CSRF token");
    assert_not_paused(&client).await;
    // The Authorization header is not sent by browsers on their own: no CSRF token needed.
    let mut tool = dashboard.client();
    let bearer = format!("Bearer {TOKEN}");
    let answer = tool
        .post("/queues/videos/pause", &[], &[("Authorization", &bearer)])
        .await;
    assert_eq!(answer.status, 303);
    assert!(client.queue("videos").counts().await.unwrap().paused);
}

#[tokio::test]
async fn read_only_hides_actions_and_refuses_changes() {
    let (_server, client) = redis().await;
    let queue = client.queue("videos");
    queue
        .push_with(
            "x",
            &ostq::PushOptions::new().delay(std::time::Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let options = ostq_web::Options::without_token().read_only(true);
    let dashboard = Dashboard::start(client.clone(), options).await;
    let (mut http, csrf) = open_session(&dashboard).await;
    let page = http.get("/queues/videos?state=scheduled").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("read-only"));
    assert!(
        !page.body.contains(r#"method="post""#),
        "no action in read-only mode"
    );
    let id = page.row_ids().pop().expect("the scheduled job is listed");
    let job_page = http.get(&format!("/queues/videos/jobs/{id}")).await;
    assert!(!job_page.body.contains(r#"method="post""#));
    for path in [
        "/queues/videos/pause".to_string(),
        "/queues/videos/bulk".to_string(),
        format!("/queues/videos/jobs/{id}/delete"),
    ] {
        let answer = http
            .post(
                &path,
                &[
                    ("csrf", &csrf),
                    ("action", "delete"),
                    ("scope", "state"),
                    ("state", "scheduled"),
                    ("confirm", "1"),
                ],
                &[],
            )
            .await;
        assert_eq!(answer.status, 405, "{path}");
    }
    let counts = queue.counts().await.unwrap();
    assert!(!counts.paused);
    assert_eq!(counts.scheduled, 1);
}

#[tokio::test]
async fn answers_carry_a_strict_content_security_policy() {
    let (_server, client) = redis().await;
    let dashboard = Dashboard::start(client, ostq_web::Options::without_token()).await;
    let mut http = dashboard.client();
    let answer = http.get("/").await;
    let csp = answer.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    // No inline script, no inline style, nothing from another origin.
    assert!(!answer.body.contains("<script>"));
    assert!(!answer.body.contains("style="));
    assert!(!answer.body.contains("http://") && !answer.body.contains("https://"));
}

#[tokio::test]
async fn the_redis_password_is_never_shown() {
    let server = common::RedisServer::start().unwrap();
    server
        .cli(&["CONFIG", "SET", "requirepass", "s3cret-pw"])
        .unwrap();
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", server.port());
    let client = ostq::Client::connect(&url).await.unwrap();
    client.queue("videos").push("1").await.unwrap();
    let options = ostq_web::Options::without_token().redis_url(&url);
    let dashboard = Dashboard::start(client, options).await;
    let mut http = dashboard.client();
    for path in ["/", "/workers", "/queues/videos", "/api/overview"] {
        let answer = http.get(path).await;
        assert_eq!(answer.status, 200);
        assert!(!answer.body.contains("s3cret-pw"), "{path}");
    }
    assert!(http.get("/").await.body.contains("redis://***@127.0.0.1"));
}
