//! The decision cache: a bundle that says which input fields its decision
//! reads gets each decision remembered per value of those fields.
//!
//! A sidecar sees the same few (caller, service, method, path) combinations
//! over and over; evaluating the bundle for each of them again is most of a
//! request's CPU (`benches/RESULTS.md`). A decision is a pure function of the
//! input fields the policy reads and the bundle's data, so a bundle that
//! declares those fields in `data.meshward.decision_cache.inputs` (dotted
//! input paths, e.g. `"attributes.request.http.method"`) lets the sidecar
//! key decisions by their values.
//!
//! Why the cache is safe, and not just fast:
//!
//! - **The declaration is checked, not trusted.** Compiling the bundle scans
//!   every module's tokens for references to `input` and refuses the bundle
//!   (NACK) when one reads a field the declaration does not cover, or when a
//!   module calls a builtin whose answer changes between calls with the same
//!   input (`time.now_ns`, `http.send`, ...). A reference the scan cannot
//!   follow (`input[x]`, `input` passed whole) counts as reading everything
//!   below the point where it stops, so the check errs towards refusing.
//! - **Only facts that do not change per request can be keys.** Request ids,
//!   addresses, times and bodies are refused as declared inputs, so a bundle
//!   that reads any of them has no cache.
//! - **A hit refuses what an evaluation refuses.** Building the input
//!   document refuses some requests (a malformed escape, query or JSON body:
//!   400); a request answered from the cache passes the same checks
//!   ([`check_request`](super::document::check_request)) first.
//! - **The key is the values themselves**, length-prefixed, compared
//!   exactly (no hash stands in for them), and it always holds the caller's
//!   and the destination's principals and the checkpoint, declared or not.
//! - **One cache per compiled revision.** A new bundle revision is a new
//!   [`CompiledPolicy`](super::CompiledPolicy) with an empty cache; registry
//!   facts (the caller's permissions, ...) are in the key when declared, so
//!   an edit of the mesh file that changes them misses the old entries.
//! - **Bounded.** At [`MAX_ENTRIES`] the cache is emptied and refills; a
//!   caller varying its paths only makes every request evaluate again.
//! - Errors are never cached: they deny, and are evaluated every time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use meshward_contract::decision_cache::{self, CacheError, Part};
use serde_json::Value;

use super::decision::Decision;
use super::input::{CallerFacts, RequestFacts, ServiceFacts};

/// Entries kept before the cache is emptied.
pub const MAX_ENTRIES: usize = 4096;

/// A bundle's decision cache: the key plan its declaration compiled to, and
/// the remembered decisions.
#[derive(Debug)]
pub struct DecisionCache {
    parts: Vec<Part>,
    entries: DashMap<Box<[u8]>, Arc<Decision>>,
    len: AtomicUsize,
}

impl DecisionCache {
    /// The cache a bundle declares, checked against its modules; `None` when
    /// the bundle declares none.
    pub fn for_bundle(
        data: &Value,
        modules: &[(&str, &str)],
    ) -> Result<Option<DecisionCache>, CacheError> {
        Ok(
            decision_cache::declared(data, modules)?.map(|parts| DecisionCache {
                parts,
                entries: DashMap::new(),
                len: AtomicUsize::new(0),
            }),
        )
    }

    /// The key of `facts`: the principals and the checkpoint, then every
    /// declared part. (The body is never part of it: a bundle that reads
    /// the body cannot declare a cache.)
    pub fn key(&self, facts: &RequestFacts) -> Vec<u8> {
        let mut key = Vec::with_capacity(256);
        put(&mut key, facts.checkpoint.as_str().as_bytes());
        put_opt(&mut key, facts.source_principal);
        put_opt(&mut key, facts.destination_principal);
        for part in &self.parts {
            match part {
                Part::Method => put(&mut key, facts.method.as_bytes()),
                Part::Path => put(&mut key, facts.path.as_bytes()),
                Part::RawPath => put(&mut key, facts.raw_path.as_bytes()),
                Part::Host => put(&mut key, facts.host.as_bytes()),
                Part::Scheme => put(&mut key, facts.scheme.as_bytes()),
                Part::Protocol => put(&mut key, facts.protocol.as_bytes()),
                Part::Header(name) => {
                    let values = facts.headers.get_all(name.as_str());
                    key.extend_from_slice(&(values.iter().count() as u32).to_le_bytes());
                    for v in values {
                        put(&mut key, v.as_bytes());
                    }
                }
                Part::Caller => put_caller(&mut key, facts.caller.as_ref()),
                Part::Service => put_service(&mut key, facts.service.as_ref()),
                Part::Constant => {}
            }
        }
        key
    }

    /// The decision remembered for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Arc<Decision>> {
        let hit = self.entries.get(key).map(|d| d.value().clone());
        let outcome = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!(crate::metrics::POLICY_CACHE_LOOKUPS, "outcome" => outcome).increment(1);
        hit
    }

    /// Remembers `decision` for `key`.
    pub fn insert(&self, key: Vec<u8>, decision: Arc<Decision>) {
        if self.len.fetch_add(1, Ordering::Relaxed) >= MAX_ENTRIES {
            self.entries.clear();
            self.len.store(1, Ordering::Relaxed);
        }
        self.entries.insert(key.into_boxed_slice(), decision);
    }

    /// Entries held now (for tests and the admin dump).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn put(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    key.extend_from_slice(bytes);
}

fn put_opt(key: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => key.push(0),
        Some(v) => {
            key.push(1);
            put(key, v.as_bytes());
        }
    }
}

fn put_map<'a>(key: &mut Vec<u8>, map: impl ExactSizeIterator<Item = (&'a String, &'a String)>) {
    key.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        put(key, k.as_bytes());
        put(key, v.as_bytes());
    }
}

/// Every field of the caller's facts (`input.meshward.caller` is built from
/// exactly these): the pattern names them all, so a fact added to
/// [`CallerFacts`] does not compile until it is keyed too.
fn put_caller(key: &mut Vec<u8>, caller: Option<&CallerFacts>) {
    let Some(CallerFacts {
        spiffe_id,
        name,
        attributes,
        permissions,
    }) = caller
    else {
        key.push(0);
        return;
    };
    key.push(1);
    put(key, spiffe_id.as_bytes());
    put(key, name.as_bytes());
    put_map(key, attributes.iter());
    key.extend_from_slice(&(permissions.len() as u32).to_le_bytes());
    for p in *permissions {
        put(key, p.as_bytes());
    }
}

/// Every field of the service's facts, named for the same reason.
fn put_service(key: &mut Vec<u8>, service: Option<&ServiceFacts>) {
    let Some(ServiceFacts {
        name,
        spiffe_id,
        metadata,
    }) = service
    else {
        key.push(0);
        return;
    };
    key.push(1);
    put(key, name.as_bytes());
    put(key, spiffe_id.as_bytes());
    put_map(key, metadata.iter());
}

#[cfg(test)]
mod tests;
