//! The small JSON endpoints the page's script polls, and the search for scripts and tools. Each
//! answers the admin API's own stable JSON forms.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ostq::admin::alerts::{self, Alert};
use ostq::admin::search::JobFilter;
use ostq::admin::{Cursor, Snapshot};
use ostq::JobState;
use serde::{Deserialize, Serialize};

use crate::{html, App};

fn failure(err: &ostq::Error) -> Response {
    tracing::warn!(error = %err, "dashboard API: admin API call failed");
    let status = match err {
        ostq::Error::Config(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    (status, Json(serde_json::json!({"error": err.to_string()}))).into_response()
}

/// `GET /api/overview`: the library's [`Snapshot`] (queues keyed by name, Redis) and the alerts
/// it raises.
pub(crate) async fn overview(State(app): State<Arc<App>>) -> Response {
    #[derive(Serialize)]
    struct Workers {
        live: usize,
        busy: u64,
    }
    #[derive(Serialize)]
    struct Document {
        #[serde(flatten)]
        snapshot: Snapshot,
        alerts: Vec<Alert>,
        /// The workers card: live workers and the jobs they run, summed.
        workers: Workers,
    }
    let snapshot = match app.sampler.lock().await.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return failure(&e),
    };
    let registry = match app.client.workers().await {
        Ok(registry) => registry,
        Err(e) => return failure(&e),
    };
    let workers = Workers {
        live: registry.len(),
        busy: registry.iter().map(|w| w.busy).sum(),
    };
    let alerts = alerts::check(&snapshot, &app.options.alert_rules);
    Json(Document {
        snapshot,
        alerts,
        workers,
    })
    .into_response()
}

/// `GET /api/totals`: every queue's running totals (processed and failed attempts since it
/// began), and their sums: the live chart takes differences between two reads.
pub(crate) async fn totals(State(app): State<Arc<App>>) -> Response {
    #[derive(Serialize, Default)]
    struct Totals {
        processed: u64,
        failed: u64,
    }
    #[derive(Serialize)]
    struct Document {
        at_ms: u64,
        processed: u64,
        failed: u64,
        queues: BTreeMap<String, Totals>,
    }
    let names = match app.client.queues().await {
        Ok(names) => names,
        Err(e) => return failure(&e),
    };
    let mut doc = Document {
        at_ms: html::now_ms(),
        processed: 0,
        failed: 0,
        queues: BTreeMap::new(),
    };
    for name in names {
        let totals = match app.client.queue(&name).totals().await {
            Ok(totals) => totals,
            Err(e) => return failure(&e),
        };
        doc.processed += totals.processed;
        doc.failed += totals.failed;
        doc.queues.insert(
            name,
            Totals {
                processed: totals.processed,
                failed: totals.failed,
            },
        );
    }
    Json(doc).into_response()
}

/// The search of a queue page, from its query string.
#[derive(Deserialize, Default, Clone)]
pub(crate) struct SearchQuery {
    pub(crate) state: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) payload: Option<String>,
    pub(crate) cursor: Option<String>,
    pub(crate) budget: Option<usize>,
    pub(crate) limit: Option<usize>,
}

impl SearchQuery {
    pub(crate) fn filter(&self) -> JobFilter {
        JobFilter::new()
            .name(self.name.clone().unwrap_or_default())
            .error(self.error.clone().unwrap_or_default())
            .payload(self.payload.clone().unwrap_or_default())
    }
}

/// `GET /api/queues/{queue}/search?state=dead&error=timeout&cursor=…`: one bounded search
/// ([`ostq::Queue::search`]), as `{"jobs": […], "examined": N, "next": cursor|null}`.
pub(crate) async fn search(
    State(app): State<Arc<App>>,
    Path(queue): Path<String>,
    Query(query): Query<SearchQuery>,
) -> Response {
    let state = match query
        .state
        .as_deref()
        .unwrap_or("pending")
        .parse::<JobState>()
    {
        Ok(state) => state,
        Err(e) => return failure(&e),
    };
    let cursor = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(text) => match text.parse::<Cursor>() {
            Ok(cursor) => Some(cursor),
            Err(e) => return failure(&e),
        },
        None => None,
    };
    let budget = query
        .budget
        .unwrap_or(app.options.search_budget)
        .min(app.options.search_budget);
    let limit = query.limit.unwrap_or(app.options.page_size);
    let queue = app.client.queue(&queue);
    match queue
        .search(state, &query.filter(), cursor.as_ref(), budget, limit)
        .await
    {
        Ok(found) => Json(found).into_response(),
        Err(e) => failure(&e),
    }
}
