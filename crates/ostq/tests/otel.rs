//! One trace from producer to worker (feature `opentelemetry`): a job pushed inside a span that
//! carries an OpenTelemetry context stores the span's W3C traceparent in its envelope, and the
//! worker's `job` span continues that trace, on every attempt. Spans are exported by an
//! OpenTelemetry SDK tracer (tracing-opentelemetry layer) into memory and checked there; Redis is
//! a private redis-server.
//!
//! `cargo test -p ostq --features opentelemetry --test otel`
#![cfg(feature = "opentelemetry")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, wait_counts};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use ostq::envelope::{Envelope, MAX_TRACE_LEN};
use ostq::keys::QueueKeys;
use ostq::otel::TraceContext;
use ostq::{BoxError, Job, PushOptions, Worker};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Finished spans, kept in memory. (Like the SDK's `InMemorySpanExporter`, which needs the SDK's
/// `testing` feature: as a dev-dependency that would be built into every test build of the crate,
/// the feature's or not.)
#[derive(Clone, Debug, Default)]
struct Spans(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Spans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<SpanData> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

/// A tracing subscriber (for this thread: the tests run on a current-thread runtime) whose
/// OpenTelemetry layer exports every span, DEBUG ones included, into the returned `Spans`.
fn traced() -> (Spans, tracing::subscriber::DefaultGuard, SdkTracerProvider) {
    let spans = Spans::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("ostq-test"));
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    (spans, guard, provider)
}

/// The OpenTelemetry span context of a tracing span.
fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

async fn raw(server: &common::RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn one_trace_from_push_to_completion() {
    let (spans, _guard, _provider) = traced();
    let (server, client) = setup().await;
    let queue = client.queue("traced");

    let producer = tracing::info_span!("producer");
    let produced = span_context(&producer);
    assert!(produced.is_valid());
    let id = queue.push("42").instrument(producer.clone()).await.unwrap();
    drop(producer);
    // The plain push (LPUSH) put the traceparent in the envelope, after an empty unique key.
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("traced").unwrap();
    let stored: Vec<u8> = redis::cmd("LINDEX")
        .arg(&keys.pending)
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored[0], 0x9b, "11 fields");
    let env = Envelope::decode(&stored).unwrap();
    let traceparent = format!("00-{}-{}-01", produced.trace_id(), produced.span_id());
    assert_eq!(env.traceparent, traceparent);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_in = seen.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("traced")
            .handler(move |job: Job| {
                let seen = seen_in.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(job.trace().map(|t| t.traceparent().to_string()));
                    // What the handler traces is part of the same trace.
                    let _work = tracing::info_span!("handler work").entered();
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 1).await;
    running.shutdown().await;

    assert_eq!(*seen.lock().unwrap(), [Some(traceparent)]);
    let producer = spans.named("producer");
    let jobs = spans.named("job");
    let work = spans.named("handler work");
    assert_eq!(
        (producer.len(), jobs.len(), work.len()),
        (1, 1, 1),
        "{jobs:?}"
    );
    let (producer, job, work) = (&producer[0], &jobs[0], &work[0]);
    assert_eq!(producer.span_context.span_id(), produced.span_id());
    assert_eq!(
        job.span_context.trace_id(),
        produced.trace_id(),
        "one trace"
    );
    assert_eq!(
        job.parent_span_id,
        produced.span_id(),
        "the producer's child"
    );
    assert!(job.parent_span_is_remote);
    assert_eq!(work.span_context.trace_id(), produced.trace_id());
    assert_eq!(work.parent_span_id, job.span_context.span_id());
    let attribute = |key: &str| {
        job.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attribute("id"), Some(id));
    assert_eq!(attribute("outcome").as_deref(), Some("completed"));
}

#[tokio::test]
async fn a_retried_job_stays_in_the_producers_trace() {
    let (spans, _guard, _provider) = traced();
    let (_server, client) = setup().await;
    let queue = client.queue("retried");

    let producer = tracing::info_span!("producer");
    let produced = span_context(&producer);
    // A priority sends the push through push.lua, which takes the trace as its last argument.
    queue
        .push_with("x", &PushOptions::new().priority(5))
        .instrument(producer.clone())
        .await
        .unwrap();
    drop(producer);

    let running = spawn(
        Worker::builder(client.clone())
            .queue("retried")
            .retry(ostq::RetryPolicy::fixed(Duration::from_millis(10)))
            .handler(|job: Job| async move {
                if job.attempt == 1 {
                    return Err::<(), BoxError>("first attempt fails".into());
                }
                Ok(())
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 2).await;
    running.shutdown().await;

    let jobs = spans.named("job");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job.span_context.trace_id(), produced.trace_id(), "{job:?}");
        assert_eq!(job.parent_span_id, produced.span_id(), "{job:?}");
    }
    assert_ne!(
        jobs[0].span_context.span_id(),
        jobs[1].span_context.span_id()
    );
}

#[tokio::test]
async fn a_job_pushed_without_a_trace_runs_without_a_parent() {
    let (spans, _guard, _provider) = traced();
    let (server, client) = setup().await;
    let queue = client.queue("untraced");
    assert_eq!(TraceContext::current(), None);
    queue.push("plain").await.unwrap();
    queue
        .push_with("scripted", &PushOptions::new().priority(1).track())
        .await
        .unwrap();
    // No trace: the envelopes are what they are without the feature (9 fields).
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("untraced").unwrap();
    let plain: Vec<u8> = redis::cmd("LINDEX")
        .arg(&keys.pending)
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let scripted: Vec<Vec<u8>> = redis::cmd("ZRANGE")
        .arg(&keys.prioritized)
        .arg(0)
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((plain[0], scripted[0][0]), (0x99, 0x99));

    let traces = Arc::new(Mutex::new(Vec::new()));
    let traces_in = traces.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("untraced")
            .handler(move |job: Job| {
                let traces = traces_in.clone();
                async move {
                    traces.lock().unwrap().push(job.trace().cloned());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 2).await;
    running.shutdown().await;

    assert_eq!(*traces.lock().unwrap(), [None, None]);
    let jobs = spans.named("job");
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        assert_eq!(job.parent_span_id, SpanId::INVALID, "a root: {job:?}");
    }
    assert_ne!(
        jobs[0].span_context.trace_id(),
        jobs[1].span_context.trace_id(),
        "a trace each"
    );
}

/// A traceparent that does not parse (written into Redis by hand, say) does not stop the job:
/// it runs, in a trace of its own.
#[tokio::test]
async fn a_traceparent_that_does_not_parse_is_ignored() {
    let (spans, _guard, _provider) = traced();
    let (server, client) = setup().await;
    let queue = client.queue("garbled");
    let keys = QueueKeys::new("garbled").unwrap();
    let env = Envelope {
        id: "g1".into(),
        payload: b"p".to_vec(),
        traceparent: "00-not-a-trace-01".into(),
        ..Envelope::default()
    };
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(env.encode())
        .query_async(&mut conn)
        .await
        .unwrap();
    let traces = Arc::new(Mutex::new(Vec::new()));
    let traces_in = traces.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("garbled")
            .handler(move |job: Job| {
                let traces = traces_in.clone();
                async move {
                    traces.lock().unwrap().push(job.trace().cloned());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 1).await;
    running.shutdown().await;
    assert_eq!(counts.dead, 0);
    assert_eq!(*traces.lock().unwrap(), [None], "not handed on either");
    let jobs = spans.named("job");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].parent_span_id, SpanId::INVALID);
}

/// Producers in other languages: `push.lua` takes the trace context after the jobs' fields, and
/// refuses one that is not a W3C traceparent (writing nothing).
#[tokio::test]
async fn push_lua_takes_a_traceparent_after_the_jobs() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("polyglot").unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let push = |extra: &[&str]| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ostq::scripts::PUSH)
            .arg(5)
            .arg(&keys.pending)
            .arg(&keys.prioritized)
            .arg(&keys.scheduled)
            .arg(&keys.jobs)
            .arg(&keys.seq)
            .arg(&keys.prefix);
        for job in ["a", "b"] {
            cmd.arg(&["", job, "", "0", "0", "0", "0", "0", "", "0"][..]);
        }
        cmd.arg(extra);
        cmd
    };
    for bad in [
        &["0"][..],
        &[""],
        &["00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"],
        &[traceparent, "caf\u{e9}=1"],
        &[traceparent, "", ""],
    ] {
        let refused: redis::RedisResult<redis::Value> = push(bad).query_async(&mut conn).await;
        assert!(refused.is_err(), "{bad:?}");
    }
    let len: usize = redis::cmd("LLEN")
        .arg(&keys.pending)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0, "refused calls write nothing");

    let _: redis::Value = push(&[traceparent, "congo=t61rcWkgMzE"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = push(&[]).query_async(&mut conn).await.unwrap();
    let stored: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&keys.pending)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let decoded: Vec<(String, String)> = stored
        .iter()
        .rev()
        .map(|bytes| {
            let env = Envelope::decode(bytes).unwrap();
            (env.traceparent, env.tracestate)
        })
        .collect();
    let traced = (traceparent.to_string(), "congo=t61rcWkgMzE".to_string());
    let none = (String::new(), String::new());
    assert_eq!(decoded, [traced.clone(), traced, none.clone(), none]);
    // The same bytes as Rust's envelope for the same job.
    let env = Envelope::decode(&stored[stored.len() - 1]).unwrap();
    assert_eq!(stored[stored.len() - 1], env.encode());
}

/// The scripts keep a job's trace fields when they rewrite it, and blank the ones a job may not
/// keep (here `enqueue_now.lua`, which rewrites a dead job it sends back to pending).
#[tokio::test]
async fn scripts_keep_trace_fields_and_blank_oversized_ones() {
    let (server, client) = setup().await;
    let queue = client.queue("rewritten");
    let keys = QueueKeys::new("rewritten").unwrap();
    let mut conn = raw(&server).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let long = "x".repeat(MAX_TRACE_LEN + 1);
    let cases = [
        (
            "kept",
            traceparent,
            "congo=t61rcWkgMzE",
            traceparent,
            "congo=t61rcWkgMzE",
        ),
        ("long-state", traceparent, long.as_str(), traceparent, ""),
        ("long-parent", long.as_str(), "k=v", "", ""),
    ];
    for (id, parent, state, _, _) in cases {
        let env = Envelope {
            id: id.into(),
            payload: b"p".to_vec(),
            attempt: 3,
            max_attempts: 3,
            unique: "u".into(),
            traceparent: parent.into(),
            tracestate: state.into(),
            ..Envelope::default()
        };
        let _: () = redis::pipe()
            .cmd("ZADD")
            .arg(&keys.dead)
            .arg(1)
            .arg(id)
            .ignore()
            .cmd("HSET")
            .arg(&keys.jobs)
            .arg(id)
            .arg(env.encode())
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(queue.retry_now(&[id]).await.unwrap(), 1);
        let back: Vec<Vec<u8>> = redis::cmd("LPOP")
            .arg(&keys.pending)
            .arg(10)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(back.len(), 1);
        let back = Envelope::decode(&back[0]).unwrap();
        let (_, _, _, want_parent, want_state) = cases.iter().find(|c| c.0 == id).unwrap();
        assert_eq!(
            (back.id.as_str(), back.attempt, back.unique.as_str()),
            (id, 0, ""),
            "sent back from dead, without its unique key"
        );
        assert_eq!(
            (back.traceparent.as_str(), back.tracestate.as_str()),
            (*want_parent, *want_state),
            "{id}"
        );
    }
}
