//! `hpack_relay`: the dev identity server's HPACK rewrite, on any sequence of
//! header blocks.
//!
//! The relay decodes request header blocks straight from a local client with
//! one decoder per connection (the dynamic table carries over from block to
//! block), and re-encodes them with a valid `:authority`. Properties: no
//! panic; a rewritten block decodes with a fresh decoder (it must not depend
//! on any table state); its `:authority`, if any, is a valid URI authority;
//! and it is the client's header list, in order, with only invalid
//! `:authority` values replaced. A block the relay refuses ends the
//! connection, so nothing after it is run.
//!
//! Input: blocks, each a two-byte big-endian length and that many bytes; a
//! last block shorter than its length is used as it is.

use http::uri::Authority;
use loona_hpack::Decoder;
use meshward_spire::devserver::fuzzing::{DEFAULT_HEADER_TABLE_SIZE, rewrite_block};

use super::Verdict;
use super::input::Input;

type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

pub fn hpack_relay(data: &[u8]) -> Verdict {
    let mut input = Input::new(data);
    if input.is_empty() {
        return Verdict::Skipped;
    }
    // As the relay sets it up, and a twin fed the same blocks, which says
    // what the client sent.
    let mut relay = relay_decoder();
    let mut client = relay_decoder();
    let mut verdict = Verdict::Rejected;
    while !input.is_empty() {
        let block = input.prefixed16();
        let Ok(rewritten) = rewrite_block(&mut relay, block) else {
            return verdict;
        };
        let sent: HeaderList = client.decode(block).unwrap_or_else(|e| {
            panic!("relay accepted {block:02x?}, which does not decode: {e:?}")
        });
        let out: HeaderList = Decoder::new().decode(&rewritten).unwrap_or_else(|e| {
            panic!("rewrite of {block:02x?} does not decode on its own: {e:?}")
        });
        check_rewrite(block, &sent, &out);
        verdict = Verdict::Accepted;
    }
    verdict
}

fn relay_decoder() -> Decoder<'static> {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
    decoder
}

fn check_rewrite(block: &[u8], sent: &HeaderList, out: &HeaderList) {
    assert_eq!(
        sent.len(),
        out.len(),
        "rewrite of {block:02x?} changed the number of headers"
    );
    for ((name, value), (out_name, out_value)) in sent.iter().zip(out) {
        assert_eq!(name, out_name, "rewrite of {block:02x?} renamed a header");
        if name.as_slice() != b":authority" {
            assert_eq!(value, out_value, "rewrite of {block:02x?} changed a value");
            continue;
        }
        assert!(
            Authority::try_from(out_value.as_slice()).is_ok(),
            "rewrite of {block:02x?} left the invalid :authority {out_value:02x?}"
        );
        if Authority::try_from(value.as_slice()).is_ok() {
            assert_eq!(value, out_value, "valid :authority of {block:02x?} changed");
        }
    }
}
