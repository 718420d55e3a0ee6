//! The export queue: finished spans wait in a bounded channel and one tokio
//! task sends them in batches, so a request never waits on a collector.
//!
//! The SDK's own batch processor runs its exporter on a dedicated thread
//! without a tokio runtime (so the gRPC and hyper clients cannot run on it)
//! and keeps its drop count to itself; this one runs on the runtime the
//! component already has and counts every span it could not deliver.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

pub(crate) const METRIC_DROPPED: &str = "meshward_trace_spans_dropped_total";
pub(crate) const METRIC_EXPORTED: &str = "meshward_trace_spans_exported_total";
pub(crate) const METRIC_FAILURES: &str = "meshward_trace_export_failures_total";

/// Describes the export families on the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        METRIC_DROPPED,
        "Finished spans that were not exported, by reason (queue_full: the collector is slower than the traffic; export_failed: the collector refused or did not answer in time; shutdown)."
    );
    metrics::describe_counter!(METRIC_EXPORTED, "Spans the OTLP collector accepted.");
    metrics::describe_counter!(
        METRIC_FAILURES,
        "OTLP export calls that failed or timed out (their spans are counted as dropped)."
    );
}

enum Message {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// How the queue batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueSettings {
    pub capacity: usize,
    pub batch_size: usize,
    pub batch_delay: Duration,
    pub export_timeout: Duration,
}

/// The SDK-facing end of the queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueProcessor {
    tx: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Span(_) => "Span",
            Message::Flush(_) => "Flush",
        })
    }
}

impl QueueProcessor {
    /// Starts the export task on the current tokio runtime.
    pub(crate) fn spawn<E: SpanExporter + 'static>(exporter: E, settings: QueueSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.capacity.max(1));
        tokio::spawn(run(exporter, rx, settings));
        Self { tx }
    }

    /// Waits until every span queued before this call was handed to the
    /// collector (or dropped), within `within`.
    pub(crate) async fn flush(&self, within: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let flushed =
            async { self.tx.send(Message::Flush(done)).await.is_ok() && wait.await.is_ok() };
        tokio::time::timeout(within, flushed).await.unwrap_or(false)
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!(METRIC_DROPPED, "reason" => "queue_full").increment(1)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::counter!(METRIC_DROPPED, "reason" => "shutdown").increment(1)
            }
        }
    }

    /// Flushing is asynchronous ([`Tracing::flush`](crate::Tracing::flush));
    /// this synchronous hook must not block a runtime thread.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<Message>,
    settings: QueueSettings,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.batch_size);
    loop {
        // Wait for the first span (or a flush), then up to `batch_delay`
        // for the batch to fill.
        let first = match rx.recv().await {
            Some(m) => m,
            None => break,
        };
        let mut flushes = Vec::new();
        take(first, &mut batch, &mut flushes);
        let deadline = tokio::time::Instant::now() + settings.batch_delay;
        while flushes.is_empty() && batch.len() < settings.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => take(m, &mut batch, &mut flushes),
                Ok(None) | Err(_) => break,
            }
        }
        send(&exporter, &mut batch, settings).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
    send(&exporter, &mut batch, settings).await;
}

fn take(m: Message, batch: &mut Vec<SpanData>, flushes: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Message::Span(s) => batch.push(*s),
        Message::Flush(done) => flushes.push(done),
    }
}

async fn send<E: SpanExporter>(exporter: &E, batch: &mut Vec<SpanData>, settings: QueueSettings) {
    while !batch.is_empty() {
        let n = batch.len().min(settings.batch_size);
        let chunk: Vec<SpanData> = batch.drain(..n).collect();
        let result = tokio::time::timeout(settings.export_timeout, exporter.export(chunk))
            .await
            .unwrap_or(Err(OTelSdkError::Timeout(settings.export_timeout)));
        match result {
            Ok(()) => metrics::counter!(METRIC_EXPORTED).increment(n as u64),
            Err(e) => {
                tracing::debug!("OTLP export of {n} spans failed: {e}");
                metrics::counter!(METRIC_FAILURES).increment(1);
                metrics::counter!(METRIC_DROPPED, "reason" => "export_failed").increment(n as u64);
            }
        }
    }
}
