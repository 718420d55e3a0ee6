//! Lets gRPC clients that send the socket path as HTTP/2 `:authority` talk to
//! the dev server's Unix sockets.
//!
//! gRPC C-core (Python `grpcio`, so the Python `spiffe` package) since 1.57 and
//! grpc-java send the (percent-encoded) socket path as `:authority` on Unix
//! sockets. The `h2` crate under tonic refuses such a request as malformed
//! (`RST_STREAM` with `PROTOCOL_ERROR`), while Go's gRPC server, and with it the
//! SPIRE agent, accepts it. A SPIRE stand-in must accept what SPIRE accepts, so
//! every accepted connection passes through this relay: request header blocks
//! are HPACK-decoded (following the client's dynamic table), an `:authority`
//! that is not a valid URI authority becomes `localhost` (what grpc-go sends),
//! and the block is re-encoded as literals without indexing, so the server's
//! HPACK state never depends on the rewrite. All other frames, and everything
//! the server sends, pass byte for byte.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload the server accepts without having said otherwise
/// (`SETTINGS_MAX_FRAME_SIZE` default; tonic's server keeps it).
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Refuse header blocks beyond this (tonic's own limit is far lower).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Refuse blocks whose decoded header list (RFC 7541 sizes) is larger: the
/// Workload API needs a few hundred bytes, and h2's default limit is 16 KiB.
const MAX_DECODED_HEADERS: usize = 64 * 1024;
/// In-memory pipe capacity between the relay and the server.
const PIPE_CAPACITY: usize = 64 * 1024;
/// RFC 7541 §4.2: the dynamic table size until SETTINGS say otherwise.
pub const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;
/// What replaces an invalid `:authority`.
const FALLBACK_AUTHORITY: &[u8] = b"localhost";

/// Hands the server an in-memory stream that carries `client`'s connection
/// with request `:authority` values repaired. Spawns the relay task, so it
/// must be called inside a Tokio runtime.
pub(crate) fn relay(client: UnixStream) -> DuplexStream {
    let (server_end, relay_end) = tokio::io::duplex(PIPE_CAPACITY);
    tokio::spawn(async move {
        let (client_rd, mut client_wr) = client.into_split();
        let (mut relay_rd, relay_wr) = tokio::io::split(relay_end);
        let outcome = {
            let requests = rewrite_requests(client_rd, relay_wr);
            let responses = tokio::io::copy(&mut relay_rd, &mut client_wr);
            tokio::pin!(requests, responses);
            tokio::select! {
                r = &mut requests => match r {
                    // The client is done sending: the server finishes answering.
                    Ok(()) => {
                        let _ = responses.await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                // The server's side ended the connection.
                _ = &mut responses => Ok(()),
            }
        };
        // On a malformed stream both directions are dropped here, which
        // closes the server's end too: the server sees the connection end.
        drop(relay_rd);
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "workload socket connection dropped");
        }
        let _ = client_wr.shutdown().await;
    });
    server_end
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A HEADERS frame whose block continues in CONTINUATION frames.
struct PendingHeaders {
    stream: u32,
    flags: u8,
    priority: Vec<u8>,
    block: Vec<u8>,
}

/// Copies the client's byte stream to the server, rewriting header blocks.
async fn rewrite_requests<R, W>(mut rd: R, mut wr: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    rd.read_exact(&mut preface).await?;
    wr.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: let the server refuse it.
        tokio::io::copy(&mut rd, &mut wr).await?;
        return wr.shutdown().await;
    }
    let mut decoder = loona_hpack::Decoder::new();
    // The server never advertises a larger table (SETTINGS_HEADER_TABLE_SIZE
    // stays at its default), so a client may not ask for more memory.
    decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
    let mut pending: Option<PendingHeaders> = None;
    loop {
        let mut head = [0u8; 9];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        // The server never raises SETTINGS_MAX_FRAME_SIZE: a larger frame is a
        // protocol error, refused before its payload is buffered.
        if len > MAX_FRAME_PAYLOAD {
            return Err(invalid(format!(
                "frame of {len} bytes exceeds the maximum frame size"
            )));
        }
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await?;

        let complete = match (kind, pending.as_mut()) {
            (FRAME_HEADERS, None) => {
                let (priority, fragment) = split_headers_payload(flags, &payload)?;
                let p = PendingHeaders {
                    stream,
                    flags,
                    priority: priority.to_vec(),
                    block: fragment.to_vec(),
                };
                if p.block.len() > MAX_HEADER_BLOCK {
                    return Err(invalid("header block too large"));
                }
                if flags & FLAG_END_HEADERS != 0 {
                    Some(p)
                } else {
                    pending = Some(p);
                    None
                }
            }
            (FRAME_CONTINUATION, Some(p)) if p.stream == stream => {
                p.block.extend_from_slice(&payload);
                if p.block.len() > MAX_HEADER_BLOCK {
                    return Err(invalid("header block too large"));
                }
                if flags & FLAG_END_HEADERS != 0 {
                    pending.take()
                } else {
                    None
                }
            }
            (_, Some(_)) => return Err(invalid("frame interleaved with a header block")),
            (_, None) => {
                wr.write_all(&head).await?;
                wr.write_all(&payload).await?;
                None
            }
        };
        if let Some(headers) = complete {
            let block = rewrite_block(&mut decoder, &headers.block)?;
            write_headers(&mut wr, &headers, &block).await?;
        }
        wr.flush().await?;
    }
    wr.shutdown().await
}

/// Splits a HEADERS payload into its priority fields and block fragment,
/// dropping padding.
fn split_headers_payload(flags: u8, payload: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let mut body = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = body
            .split_first()
            .ok_or_else(|| invalid("HEADERS without pad length"))?;
        body = rest
            .get(..rest.len().saturating_sub(usize::from(pad)))
            .filter(|_| usize::from(pad) <= rest.len())
            .ok_or_else(|| invalid("HEADERS padding exceeds payload"))?;
    }
    if flags & FLAG_PRIORITY != 0 {
        if body.len() < 5 {
            return Err(invalid("HEADERS priority truncated"));
        }
        Ok(body.split_at(5))
    } else {
        Ok((&[], body))
    }
}

/// Decodes one header block and re-encodes it, with a valid `:authority`, as
/// literals without indexing. A block whose decoded header list exceeds
/// [`MAX_DECODED_HEADERS`] is refused: indexed references let a 16 KiB block
/// name a 4 KiB table entry thousands of times, and the rewrite writes every
/// one out as a literal.
pub fn rewrite_block(decoder: &mut loona_hpack::Decoder<'_>, block: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 64);
    // RFC 7541 §4.1 sizes: name + value + 32 per field.
    let mut decoded = 0usize;
    let mut too_large = false;
    decoder
        .decode_with_cb(block, |name, value| {
            decoded = decoded.saturating_add(name.len() + value.len() + 32);
            if decoded > MAX_DECODED_HEADERS {
                too_large = true;
            }
            if too_large {
                return;
            }
            let value: &[u8] = if name.as_ref() == b":authority" && !valid_authority(&value) {
                tracing::trace!(authority = %String::from_utf8_lossy(&value), "replacing invalid :authority");
                FALLBACK_AUTHORITY
            } else {
                &value
            };
            // Literal header field without indexing, new name (RFC 7541 §6.2.2).
            out.push(0x00);
            encode_string(&mut out, &name);
            encode_string(&mut out, value);
        })
        .map_err(|e| invalid(format!("HPACK: {e:?}")))?;
    if too_large {
        return Err(invalid(format!(
            "decoded header list larger than {MAX_DECODED_HEADERS} bytes"
        )));
    }
    Ok(out)
}

fn valid_authority(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits from `first` (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, value: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        // Fits the prefix, so it fits a u8.
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A raw (not Huffman-coded) HPACK string literal (RFC 7541 §5.2).
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// Writes `block` as a HEADERS frame plus CONTINUATION frames as needed.
async fn write_headers<W: AsyncWrite + Unpin>(
    wr: &mut W,
    headers: &PendingHeaders,
    block: &[u8],
) -> io::Result<()> {
    let first_room = MAX_FRAME_PAYLOAD - headers.priority.len();
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = headers.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let mut payload = headers.priority.clone();
    payload.extend_from_slice(first);
    write_frame(wr, FRAME_HEADERS, flags, headers.stream, &payload).await?;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame(wr, FRAME_CONTINUATION, flags, headers.stream, chunk).await?;
        rest = tail;
    }
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let len = payload.len();
    let mut head = [0u8; 9];
    head[0] = (len >> 16) as u8;
    head[1] = (len >> 8) as u8;
    head[2] = len as u8;
    head[3] = kind;
    head[4] = flags;
    head[5..].copy_from_slice(&stream.to_be_bytes());
    wr.write_all(&head).await?;
    wr.write_all(payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;
    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode(block: &[u8]) -> Result<HeaderList, Box<dyn std::error::Error>> {
        loona_hpack::Decoder::new()
            .decode(block)
            .map_err(|e| format!("{e:?}").into())
    }

    fn request(authority: &[u8]) -> Vec<(&[u8], &[u8])> {
        vec![
            (b":method".as_slice(), b"POST".as_slice()),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority),
            (b"workload.spiffe.io", b"true"),
        ]
    }

    #[test]
    fn invalid_authority_becomes_localhost_across_the_dynamic_table() -> TestResult {
        let path = b"%2Ftmp%2Fmw%2Fs%2Fagent_a.sock".as_slice();
        assert!(!valid_authority(path));
        // A client encoder indexes headers, so the second request refers to
        // the first one's entries: the relay must still see (and fix) them.
        let mut encoder = loona_hpack::Encoder::new();
        let first = encoder.encode(request(path));
        let second = encoder.encode(request(path));
        let mut decoder = loona_hpack::Decoder::new();
        for block in [first, second] {
            let rewritten = decode(&rewrite_block(&mut decoder, &block)?)?;
            let expected: HeaderList = request(b"localhost")
                .into_iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(rewritten, expected);
        }
        Ok(())
    }

    #[test]
    fn valid_authority_is_kept() -> TestResult {
        let block = loona_hpack::Encoder::new().encode(request(b"localhost:1234"));
        let rewritten = decode(&rewrite_block(&mut loona_hpack::Decoder::new(), &block)?)?;
        assert!(rewritten.contains(&(b":authority".to_vec(), b"localhost:1234".to_vec())));
        Ok(())
    }

    /// Blocks that end inside an integer, a string or a size update, and a
    /// size update beyond the table the server allows: each is an error
    /// that ends the connection, never a panic (the old `hpack` 0.3 crate
    /// panicked on the truncated size update, `decoder.rs:453`).
    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let full = loona_hpack::Encoder::new().encode(request(b"localhost"));
        let mut cases: Vec<Vec<u8>> = vec![
            vec![0x3f],                                     // size update, integer cut short
            vec![0x3f, 0xff],                               // ... still cut short
            vec![0x3f, 0xe1, 0xff, 0x03],                   // size update to 65_536 (> 4096)
            vec![0x00, 0x7f],                               // literal, name length cut short
            vec![0x00, 0x05, b'a'],                         // literal, name shorter than said
            vec![0x00, 0x01, b'a', 0x85],                   // value length 5 of nothing
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f], // index overflows
            vec![0xbe],                                     // index 62: dynamic table is empty
        ];
        for cut in 1..full.len() {
            cases.push(full[..cut].to_vec());
        }
        for block in cases {
            let mut decoder = loona_hpack::Decoder::new();
            decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rewrite_block(&mut decoder, &block).map(|_| ())
            }));
            match result {
                Err(_) => panic!("panicked on {block:02x?}"),
                // A prefix can be a whole (shorter) header list: fine.
                Ok(Ok(())) => {}
                Ok(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{block:02x?}"),
            }
        }
        for bad in [vec![0x3f], vec![0x3f, 0xe1, 0xff, 0x03], vec![0xbe]] {
            let mut decoder = loona_hpack::Decoder::new();
            decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
            assert!(rewrite_block(&mut decoder, &bad).is_err(), "{bad:02x?}");
        }
    }

    /// One 4 KiB table entry referenced from every byte of a 16 KiB block
    /// would decode to 64 MiB of literals; the relay refuses it instead.
    #[test]
    fn blocks_that_expand_beyond_the_limit_are_refused() {
        let big = vec![b'a'; 4000];
        let mut block = vec![0x40]; // literal with incremental indexing, new name
        encode_string(&mut block, b"x-big");
        encode_string(&mut block, &big);
        block.extend(std::iter::repeat_n(0xbe, 16 * 1024)); // index 62: that entry
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_HEADER_TABLE_SIZE);
        let err = rewrite_block(&mut decoder, &block).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        // A handful of references stays well within the limit.
        let mut small = vec![0x40];
        encode_string(&mut small, b"x-big");
        encode_string(&mut small, &big);
        small.extend([0xbe; 3]);
        let mut decoder = loona_hpack::Decoder::new();
        let rewritten = decode(&rewrite_block(&mut decoder, &small).unwrap()).unwrap();
        assert_eq!(rewritten.len(), 4);
    }

    #[test]
    fn integers_follow_rfc7541_examples() {
        // C.1.1 and C.1.2: 10 and 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        encode_integer(&mut out, 10, 5, 0);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn headers_payload_padding_and_priority_are_split_off() -> TestResult {
        let payload = [2u8, 0, 0, 0, 3, 16, b'a', b'b', 0, 0];
        let (priority, fragment) = split_headers_payload(FLAG_PADDED | FLAG_PRIORITY, &payload)?;
        assert_eq!(priority, [0, 0, 0, 3, 16]);
        assert_eq!(fragment, b"ab");
        assert!(split_headers_payload(FLAG_PADDED, &[9, 1]).is_err());
        Ok(())
    }
}
