//! Fuzzes the policy input document builder (reports the request as sent).
//!
//! The input layout and the properties are in `meshward::fuzz_checks::policy_input`,
//! shared with the stable replay test `tests/fuzz_regressions.rs`.

#![no_main]

use libfuzzer_sys::{Corpus, fuzz_target};
use meshward::fuzz_checks::Verdict;

// Inputs the check skips stay out of the corpus.
fuzz_target!(|data: &[u8]| -> Corpus {
    match meshward::fuzz_checks::policy_input(data) {
        Verdict::Skipped => Corpus::Reject,
        Verdict::Accepted | Verdict::Rejected => Corpus::Keep,
    }
});
