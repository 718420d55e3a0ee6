//! Fuzzes the strict MCP body parser (no differential with serde_json, bounded refusals).
//!
//! The input layout and the properties are in `meshward::fuzz_checks::mcp_inspect`,
//! shared with the stable replay test `tests/fuzz_regressions.rs`.

#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use meshward::fuzz_checks::Verdict;

// Inputs the check skips stay out of the corpus.
fuzz_target!(|data: &[u8]| -> Corpus {
    match meshward::fuzz_checks::mcp_inspect(data) {
        Verdict::Skipped => Corpus::Reject,
        Verdict::Accepted | Verdict::Rejected => Corpus::Keep,
    }
});
