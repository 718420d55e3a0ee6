//! Waiting for a condition, the one way the harnesses do it: check, and
//! check again every 20 ms until it holds or a bound passes. Readiness is
//! always a condition someone can observe, never a fixed sleep.

use std::time::{Duration, Instant};

/// Checks until `check` yields `Ok`, at most `within`; the value and how
/// long it took, or the last `Err` it said.
async fn until<T, F, Fut>(within: Duration, mut check: F) -> Result<(T, Duration), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return Ok((v, start.elapsed())),
            Err(last) => last,
        };
        if start.elapsed() > within {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it yields `Ok`; panics with `what` and the last
/// observation after `within`.
pub async fn poll<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    match until(within, check).await {
        Ok((v, _)) => v,
        Err(last) => panic!("{what}: not within {within:?}; last: {last}"),
    }
}

/// Polls `check` until it returns true or `within` elapses; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    until(within, || {
        let fut = check();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err(String::new())
            }
        }
    })
    .await
    .ok()
    .map(|(_, took)| took)
}
