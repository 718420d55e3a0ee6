//! A log destination that never slows a request: lines go through a bounded
//! queue to one writer thread; a full queue drops the line and counts it.
//!
//! Access and decision logs are written per request, so a slow disk or a
//! blocked pipe must cost lines, never latency. The writer flushes whenever
//! the queue is empty, so a line reaches the file within one write of the
//! request that made it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;

/// Lines waiting for the writer; beyond this they are dropped.
const QUEUE: usize = 16 * 1024;

pub(crate) const METRIC_DROPPED: &str = "meshward_log_lines_dropped_total";

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    /// Appended to; created when missing.
    File(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = std::convert::Infallible;

    /// `-` or `stdout`, `stderr`, anything else a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "-" | "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Stderr => f.write_str("stderr"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A log file or stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{log} log {target}: {source}")]
pub struct SinkError {
    pub log: &'static str,
    pub target: String,
    #[source]
    pub source: std::io::Error,
}

/// The sending end; cheap to clone.
#[derive(Debug, Clone)]
pub struct LineSink {
    log: &'static str,
    tx: mpsc::SyncSender<Vec<u8>>,
}

impl LineSink {
    /// Opens `target` for the log named `log` (`access`, `decision`) and
    /// starts its writer thread.
    pub fn open(log: &'static str, target: &LogTarget) -> Result<Self, SinkError> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::Stderr => Box::new(std::io::stderr()),
            LogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SinkError {
                        log,
                        target: target.to_string(),
                        source,
                    })?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        std::thread::Builder::new()
            .name(format!("meshward-{log}-log"))
            .spawn(move || write_lines(rx, out))
            .map_err(|source| SinkError {
                log,
                target: target.to_string(),
                source,
            })?;
        Ok(Self { log, tx })
    }

    /// Queues one line (a newline is added); drops it when the writer is
    /// behind.
    pub fn write(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        if self.tx.try_send(line).is_err() {
            metrics::counter!(METRIC_DROPPED, "log" => self.log).increment(1);
        }
    }

    /// Queues one JSON value as a line.
    pub fn write_json(&self, value: &serde_json::Value) {
        match serde_json::to_vec(value) {
            Ok(line) => self.write(line),
            Err(e) => tracing::warn!(log = self.log, "log line not serializable: {e}"),
        }
    }
}

fn write_lines(rx: mpsc::Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let mut ok = out.write_all(&line).is_ok();
        while let Ok(line) = rx.try_recv() {
            ok &= out.write_all(&line).is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            tracing::warn!("a log line could not be written");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let sink = LineSink::open("access", &LogTarget::File(path.clone())).unwrap();
        for i in 0..100 {
            sink.write_json(&serde_json::json!({ "n": i }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 100 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::yield_now();
        };
        let ns: Vec<u64> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ns, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let e = LineSink::open(
            "decision",
            &LogTarget::File("/nonexistent-dir/x/decisions.log".into()),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("decision log") && msg.contains("/nonexistent-dir/x"),
            "{msg}"
        );
    }

    #[test]
    fn targets_parse() {
        assert_eq!("-".parse::<LogTarget>().unwrap(), LogTarget::Stdout);
        assert_eq!("stderr".parse::<LogTarget>().unwrap(), LogTarget::Stderr);
        assert_eq!(
            "/var/log/a.log".parse::<LogTarget>().unwrap(),
            LogTarget::File("/var/log/a.log".into())
        );
    }
}
