//! A steady background load through an agent's sidecar, and what it saw.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, described.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn rps(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = (self.ok + self.failed) as f64;
        n / self.elapsed.as_secs_f64().max(1e-3)
    }
}

/// Continuous, paced GET load from concurrent client tasks (each with its
/// own keep-alive connection) against one URL, until stopped or `limit`
/// elapses. Anything but a 200 within 10 s counts as a failure.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    errors: std::sync::Arc<Mutex<Vec<String>>>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, workers: usize, per_worker_rps: u32, limit: Duration) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let stop = tokio_util::sync::CancellationToken::new();
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let period = Duration::from_secs(1) / per_worker_rps.max(1);
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, failed, errors) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    use http_body_util::BodyExt;
                    let client: hyper_util::client::legacy::Client<
                        _,
                        http_body_util::Empty<bytes::Bytes>,
                    > = hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build_http();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let deadline = tokio::time::Instant::now() + limit;
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep_until(deadline) => return,
                            _ = tick.tick() => {}
                        }
                        let uri: http::Uri = match url.parse() {
                            Ok(u) => u,
                            Err(e) => panic!("load url {url}: {e}"),
                        };
                        let outcome = async {
                            let resp = client.get(uri).await.map_err(|e| format!("{e:?}"))?;
                            let status = resp.status();
                            let body = resp
                                .into_body()
                                .collect()
                                .await
                                .map_err(|e| format!("body: {e}"))?
                                .to_bytes();
                            if status == http::StatusCode::OK {
                                Ok(())
                            } else {
                                Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                            }
                        };
                        match tokio::time::timeout(Duration::from_secs(10), outcome).await {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut errs = errors.lock().unwrap_or_else(|p| p.into_inner());
                                if errs.len() < 10 {
                                    errs.push(e);
                                }
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut errs = errors.lock().unwrap_or_else(|p| p.into_inner());
                                if errs.len() < 10 {
                                    errs.push("no answer within 10s".into());
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            started,
            tasks,
        }
    }

    /// (succeeded, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The first failures seen so far, described.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the clients (requests in flight finish) and reports.
    pub async fn finish(self) -> LoadReport {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let (ok, failed) = (
            self.ok.load(std::sync::atomic::Ordering::Relaxed),
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
        );
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        LoadReport {
            ok,
            failed,
            errors,
            elapsed: self.started.elapsed(),
        }
    }
}
