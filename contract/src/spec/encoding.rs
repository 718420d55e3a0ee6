//! Canonical encodings: a resource's version is the hash of its bytes, so the
//! bytes must depend only on its content. prost encodes `map<>` fields from a
//! `HashMap` in arbitrary order, which would give an unchanged resource a new
//! version on every rebuild; these helpers write maps sorted by key.

use std::collections::BTreeMap;

/// Appends `map` as protobuf map field `tag`, entries sorted by key. Fields
/// may appear in any order on the wire, so `encoded ++ map` decodes to the
/// message with the map filled in.
pub(crate) fn with_sorted_string_map(
    mut encoded: Vec<u8>,
    tag: u32,
    map: &BTreeMap<String, String>,
) -> Vec<u8> {
    prost::encoding::btree_map::encode(
        prost::encoding::string::encode,
        prost::encoding::string::encoded_len,
        prost::encoding::string::encode,
        prost::encoding::string::encoded_len,
        tag,
        map,
        &mut encoded,
    );
    encoded
}

/// Registry attributes and metadata: no empty key (`mesh.yaml` refuses one).
pub(crate) fn string_map(
    map: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    if map.keys().any(String::is_empty) {
        return Err("empty key".to_string());
    }
    Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}
