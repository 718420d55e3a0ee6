//! Fuzzes the dev identity server's HPACK :authority rewrite.
//!
//! The input layout and the properties are in `meshward::fuzz_checks::hpack_relay`,
//! shared with the stable replay test `tests/fuzz_regressions.rs`.

#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use meshward::fuzz_checks::Verdict;

// Inputs the check skips stay out of the corpus.
fuzz_target!(|data: &[u8]| -> Corpus {
    match meshward::fuzz_checks::hpack_relay(data) {
        Verdict::Skipped => Corpus::Reject,
        Verdict::Accepted | Verdict::Rejected => Corpus::Keep,
    }
});
