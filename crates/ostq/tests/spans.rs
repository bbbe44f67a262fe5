//! Each job runs inside a `job` tracing span that names its queue, task, id, attempt and outcome,
//! and events the handler logs carry that span.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, PushOptions, Worker};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span's or an event's fields as text.
#[derive(Default, Clone, Debug)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// An event's message and the fields of the `job` span it was in, if any.
type SeenEvent = (String, Option<Fields>);

/// Keeps every closed `job` span's fields, and for every event the `job` span it was in.
#[derive(Clone, Default)]
struct Recorder {
    closed: Arc<Mutex<Vec<Fields>>>,
    events: Arc<Mutex<Vec<SeenEvent>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let message = fields.0.get("message").cloned().unwrap_or_default();
        let job = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find(|span| span.name() == "job")
                .and_then(|span| span.extensions().get::<Fields>().cloned())
        });
        self.events.lock().unwrap().push((message, job));
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if span.name() == "job" {
                if let Some(fields) = span.extensions().get::<Fields>() {
                    self.closed.lock().unwrap().push(fields.clone());
                }
            }
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Resize {
    frame: String,
}

impl ostq::Task for Resize {
    const NAME: &'static str = "resize";
}

#[tokio::test]
async fn every_job_runs_in_a_span_with_its_queue_task_id_attempt_and_outcome() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let (_server, client) = setup().await;
    let queue = client.queue("traced");
    let ok = queue
        .enqueue_with(
            &Resize {
                frame: "fine".into(),
            },
            PushOptions::new().id("job-ok"),
        )
        .await
        .unwrap();
    let bad = queue
        .enqueue_with(
            &Resize {
                frame: "broken".into(),
            },
            PushOptions::new().id("job-bad").max_attempts(2),
        )
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("traced")
            .retry(ostq::RetryPolicy::fixed(Duration::from_millis(10)))
            .task_with_job(|task: Resize, _job: Job| async move {
                tracing::info!("handling {}", task.frame);
                if task.frame == "broken" {
                    return Err::<(), BoxError>("it broke".into());
                }
                Ok(())
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.dead == 1 && c.processed_total == 3
    })
    .await;
    running.shutdown().await;

    let closed = recorder.closed.lock().unwrap().clone();
    let spans: Vec<BTreeMap<String, String>> = closed.into_iter().map(|f| f.0).collect();
    let of = |id: &str| -> Vec<(String, String, String, String)> {
        spans
            .iter()
            .filter(|f| f.get("id").map(String::as_str) == Some(id))
            .map(|f| {
                (
                    f["queue"].clone(),
                    f["task"].clone(),
                    f["attempt"].clone(),
                    f["outcome"].clone(),
                )
            })
            .collect()
    };
    let row = |attempt: &str, outcome: &str| {
        (
            "traced".to_string(),
            "resize".to_string(),
            attempt.to_string(),
            outcome.to_string(),
        )
    };
    assert_eq!(of(&ok), [row("1", "completed")], "{spans:?}");
    assert_eq!(of(&bad), [row("1", "retry"), row("2", "dead")], "{spans:?}");
    // The handler's own events carry the job's span.
    let events = recorder.events.lock().unwrap().clone();
    let handled: Vec<_> = events
        .iter()
        .filter(|(message, _)| message.starts_with("handling"))
        .map(|(message, job)| (message.clone(), job.as_ref().map(|f| f.0["id"].clone())))
        .collect();
    assert!(
        handled.contains(&("handling fine".to_string(), Some(ok.clone()))),
        "{handled:?}"
    );
    assert!(
        handled.contains(&("handling broken".to_string(), Some(bad.clone()))),
        "{handled:?}"
    );
}
