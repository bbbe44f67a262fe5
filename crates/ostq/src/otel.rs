//! One trace from producer to worker, with OpenTelemetry (the `opentelemetry` feature).
//!
//! A job pushed inside a [`tracing`] span that carries an OpenTelemetry context (through
//! [`tracing_opentelemetry`]'s layer) keeps that span's W3C trace context in its envelope: the
//! `traceparent` and, when not empty, the `tracestate` (docs/design.md §3). The worker's `job`
//! span then has the producer's span as its parent, so the producer, every attempt of the job and
//! whatever the handler traces make one trace. Retries keep the trace context, so a second
//! attempt is one more child of the producer's span in the same trace.
//!
//! ```no_run
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tracing::Instrument;
//! use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};
//!
//! #[tokio::main]
//! async fn main() -> ostq::Result<()> {
//!     // Your exporter goes here (opentelemetry-otlp's, say, with `.with_batch_exporter(..)`).
//!     let provider = SdkTracerProvider::builder().build();
//!     tracing_subscriber::registry()
//!         // Unfiltered: it sees the worker's `job` spans, which are DEBUG spans.
//!         .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("videos")))
//!         .with(tracing_subscriber::fmt::layer().with_filter(EnvFilter::new("info")))
//!         .init();
//!
//!     let client = ostq::Client::connect("redis://127.0.0.1:6379").await?;
//!     // The producer: a push inside a span stores the span's traceparent in the job.
//!     client
//!         .queue("videos")
//!         .push("42")
//!         .instrument(tracing::info_span!("upload", video = 42))
//!         .await?;
//!
//!     // The worker (here, or in another process set up the same way): its `job` span is a
//!     // child of `upload`, and what the handler traces is part of the same trace.
//!     ostq::Worker::builder(client)
//!         .queue("videos")
//!         .handler(|job: ostq::Job| async move {
//!             tracing::info!("transcoding video {}", job.payload_str()?);
//!             Ok::<_, ostq::BoxError>(())
//!         })
//!         .build()?
//!         .run()
//!         .await?;
//!     let _ = provider.shutdown(); // flushes what the exporter still holds
//!     Ok(())
//! }
//! ```
//!
//! Without a trace context (no span, no OpenTelemetry layer, or a span it does not see) a job is
//! pushed exactly as without the feature: nothing is added to its envelope, and its `job` span
//! is the root of a trace of its own.
//!
//! The worker's `job` span is a DEBUG span: a subscriber that filters DEBUG out for `ostq`
//! (a global `EnvFilter` of `info`, say) disables it, and then there is nothing to continue the
//! trace with. Filter the layers that need less (the fmt layer, say) with a per-layer filter,
//! or allow `ostq::worker::executor=debug`.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::{Envelope, MAX_TRACE_LEN};
use crate::{Error, Result};

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The W3C trace context a job carries: a `traceparent` and a `tracestate` (possibly empty).
///
/// ```
/// use ostq::otel::TraceContext;
/// let trace = TraceContext::parse(
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
///     "congo=t61rcWkgMzE",
/// )?;
/// assert_eq!(trace.tracestate(), "congo=t61rcWkgMzE");
/// assert!(TraceContext::parse("not a traceparent", "").is_err());
/// # Ok::<(), ostq::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: String,
}

impl TraceContext {
    /// A trace context given as text (from a `TRACEPARENT` environment variable or another
    /// process, say). The `traceparent` must be a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`,
    /// lowercase, ids not all zeros; a later version may append `-…`); the `tracestate` (`""` for
    /// none) at most 512 printable ASCII characters. Anything else is [`Error::Config`]. These
    /// are the checks `push.lua` makes on its trace arguments.
    pub fn parse(traceparent: &str, tracestate: &str) -> Result<Self> {
        if !is_traceparent(traceparent) {
            return Err(Error::Config(format!(
                "{:?} is not a W3C traceparent (00-<trace id: 32 hex>-<parent id: 16 hex>-<flags: 2 hex>)",
                truncated(traceparent)
            )));
        }
        if !is_tracestate(tracestate) {
            return Err(Error::Config(format!(
                "tracestate {:?} must be at most {MAX_TRACE_LEN} printable ASCII characters",
                truncated(tracestate)
            )));
        }
        Ok(Self {
            traceparent: traceparent.to_string(),
            tracestate: tracestate.to_string(),
        })
    }

    /// The trace context of the current span (what a push made here stores in its jobs), or
    /// `None` when there is none: no span, no OpenTelemetry layer, or an invalid context. Falls
    /// back on OpenTelemetry's current context (code that uses the OpenTelemetry API directly).
    ///
    /// ```
    /// // Outside any span there is nothing to propagate.
    /// assert_eq!(ostq::otel::TraceContext::current(), None);
    /// ```
    pub fn current() -> Option<Self> {
        Self::of_span(&tracing::Span::current())
            .or_else(|| Self::of_context(&opentelemetry::Context::current()))
    }

    /// The trace context of `span`, or `None` when it has no valid OpenTelemetry context.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        if span.is_disabled() {
            return None;
        }
        Self::of_context(&span.context())
    }

    /// The trace context of an OpenTelemetry [`Context`](opentelemetry::Context), or `None` when
    /// it has no valid span context.
    pub fn of_context(cx: &opentelemetry::Context) -> Option<Self> {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        // A tracestate too long for a job is dropped (the W3C allows vendors to drop entries).
        if carrier.tracestate.len() > MAX_TRACE_LEN {
            carrier.tracestate.clear();
        }
        (!carrier.traceparent.is_empty()).then_some(Self {
            traceparent: carrier.traceparent,
            tracestate: carrier.tracestate,
        })
    }

    /// The W3C `traceparent`: version, trace id, parent span id, flags.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The W3C `tracestate` (vendor entries); `""` when none.
    pub fn tracestate(&self) -> &str {
        &self.tracestate
    }

    /// The OpenTelemetry context this trace context stands for: a remote parent span, to give
    /// a span with [`OpenTelemetrySpanExt::set_parent`]. Without a parent span when the
    /// `traceparent` does not parse (one written by hand into Redis, say).
    pub fn to_context(&self) -> opentelemetry::Context {
        extract(&self.traceparent, &self.tracestate)
    }

    /// The trace context a job's envelope carries: `None` when it has none, or one that is not
    /// W3C syntax (written by hand, say); a tracestate that is not one is left out.
    pub(crate) fn of_envelope(traceparent: String, mut tracestate: String) -> Option<Self> {
        if !is_traceparent(&traceparent) {
            return None;
        }
        if !is_tracestate(&tracestate) {
            tracestate.clear();
        }
        Some(Self {
            traceparent,
            tracestate,
        })
    }
}

/// Makes the job's span continue the trace its envelope carries (a span of the producer's), if
/// any: called before the span is first entered, since the OpenTelemetry layer starts its span
/// then and a started span's parent cannot change. A `traceparent` that does not parse leaves the
/// span without a parent: the job runs as it would without one.
pub(crate) fn continue_trace(span: &tracing::Span, envelope: &[u8]) {
    if span.is_disabled() {
        return;
    }
    let Some((traceparent, tracestate)) = Envelope::peek_trace(envelope) else {
        return;
    };
    let cx = extract(traceparent, tracestate);
    if cx.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer: then there is no trace to continue.
        let _ = span.set_parent(cx);
    } else {
        tracing::debug!(
            traceparent = %truncated(traceparent),
            "the job's traceparent does not parse; its span starts a trace of its own"
        );
    }
}

fn extract(traceparent: &str, tracestate: &str) -> opentelemetry::Context {
    let carrier = Carrier {
        traceparent: traceparent.to_string(),
        tracestate: tracestate.to_string(),
    };
    TraceContextPropagator::new().extract(&carrier)
}

/// The two W3C fields, as the propagator reads and writes them.
#[derive(Default)]
struct Carrier {
    traceparent: String,
    tracestate: String,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE => self.tracestate = value,
            _ => {}
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.traceparent),
            TRACESTATE if !self.tracestate.is_empty() => Some(&self.tracestate),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// The W3C traceparent syntax, as `push.lua` checks it: `vv-<32>-<16>-<2>` in lowercase hex,
/// version not `ff`, ids not all zeros; version 00 has exactly these four parts, a later version
/// may append `-` and more. At most [`MAX_TRACE_LEN`] bytes.
fn is_traceparent(s: &str) -> bool {
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let zeros = |part: &str| part.bytes().all(|b| b == b'0');
    let b = s.as_bytes();
    if s.len() < 55 || s.len() > MAX_TRACE_LEN || !is_tracestate(s) {
        return false;
    }
    let (version, trace_id, parent_id, flags) = (&s[0..2], &s[3..35], &s[36..52], &s[53..55]);
    b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && !zeros(trace_id)
        && hex(parent_id, 16)
        && !zeros(parent_id)
        && hex(flags, 2)
        && (s.len() == 55 || (version != "00" && b[55] == b'-'))
}

/// At most [`MAX_TRACE_LEN`] printable ASCII characters (what a tracestate may hold).
fn is_tracestate(s: &str) -> bool {
    s.len() <= MAX_TRACE_LEN && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// At most 80 bytes of `s`, for messages.
fn truncated(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_syntax() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(is_traceparent(ok));
        assert!(is_traceparent(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later"
        ));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
        assert!(is_tracestate("a=1,b=2"));
        assert!(!is_tracestate("a=\u{e9}"));
        assert!(!is_tracestate(&"a".repeat(MAX_TRACE_LEN + 1)));
    }

    #[test]
    fn a_parsed_context_extracts_to_its_span_context() {
        let trace = TraceContext::parse(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "congo=t61rcWkgMzE",
        )
        .unwrap();
        let cx = trace.to_context();
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            format!("{}", sc.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(TraceContext::of_context(&cx), Some(trace));
    }
}
