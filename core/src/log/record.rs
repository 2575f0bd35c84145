//! The record format: how an entry, a fork proof, a local forget marker or
//! the padding left by a dropped record is laid out in the log (see the
//! module docs of [`crate::log`]), reading one frame back, and the two
//! in-place rewrites a record may undergo (erasing its payload, dropping
//! it), which keep its length and so every offset.

use std::io::Read;

use super::{
    FRAME_LEN, KIND_ENTRY, KIND_FORGET, KIND_FORK, KIND_PADDING, MAX_BODY_LEN, RecordBody,
};
use crate::entry::{Entry, ForkProof, Header, MAX_HEADER_LEN, Payload, UncheckedForkProof};
use crate::keys::FeedId;

/// Payload flag: no payload bytes follow.
const PAYLOAD_ABSENT: u8 = 0;
/// Payload flag: the payload's bytes follow.
const PAYLOAD_HELD: u8 = 1;
/// Payload flag: erased; what follows (the old payload's room, or nothing
/// for an entry stored erased) is zeros.
const PAYLOAD_ERASED: u8 = 2;

/// A decoded record body: a record, or the padding of a dropped one.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Padding is the rare case.
pub(crate) enum Decoded {
    Record(RecordBody),
    Padding,
}

/// Encode a record body for an entry.
pub(crate) fn encode_entry_body(entry: &Entry, out: &mut Vec<u8>) {
    let header = entry.header.encode();
    out.push(KIND_ENTRY);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&entry.signature.to_bytes());
    match &entry.payload {
        Payload::Held(p) => {
            out.push(PAYLOAD_HELD);
            out.extend_from_slice(p);
        }
        Payload::Absent => out.push(PAYLOAD_ABSENT),
        Payload::Erased => out.push(PAYLOAD_ERASED),
    }
}

/// Encode a full framed record (frame + body) onto `out`.
pub(crate) fn encode_record(body: &RecordBody, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN as usize]);
    match body {
        RecordBody::Entry(e) => encode_entry_body(e, out),
        RecordBody::Fork(p) => {
            out.push(KIND_FORK);
            out.extend_from_slice(&postcard::to_stdvec(p).unwrap_or_default());
        }
        RecordBody::Forget(feed) => {
            out.push(KIND_FORGET);
            out.extend_from_slice(feed.as_bytes());
        }
    }
    let body_len = (out.len() - start) as u64 - FRAME_LEN;
    let crc = crc32fast::hash(&out[start + FRAME_LEN as usize..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Where the payload flag of an entry body sits (`None` if `body` is not an
/// entry body long enough to have one).
fn payload_flag_at(body: &[u8]) -> Option<usize> {
    if body.first() != Some(&KIND_ENTRY) || body.len() < 3 {
        return None;
    }
    let header_len = u16::from_le_bytes([body[1], body[2]]) as usize;
    let at = 3 + header_len + 64;
    (at < body.len()).then_some(at)
}

/// The body an entry body becomes when its payload is erased in place:
/// the same length, the flag set to erased, the payload's bytes zeroed.
/// `None` if `body` is not an entry body.
pub(crate) fn erased_body(body: &[u8]) -> Option<Vec<u8>> {
    let at = payload_flag_at(body)?;
    let mut out = body.to_vec();
    out[at] = PAYLOAD_ERASED;
    out[at + 1..].fill(0);
    Some(out)
}

/// The bytes of an erased entry's body that held its payload (0 for any
/// other body): what compaction gives back.
pub(crate) fn payload_room(body: &[u8]) -> u64 {
    match payload_flag_at(body) {
        Some(at) if body[at] == PAYLOAD_ERASED => (body.len() - at - 1) as u64,
        _ => 0,
    }
}

/// The bytes after an entry body's payload flag (its payload, or the room
/// an erased payload left): what erasing it gives back to compaction.
pub(crate) fn payload_bytes_in(body: &[u8]) -> u64 {
    payload_flag_at(body).map_or(0, |at| (body.len() - at - 1) as u64)
}

/// How much of an erased entry's body a compacted segment keeps: up to
/// and with its payload flag. `None` for any other body (kept whole).
pub(crate) fn erased_len(body: &[u8]) -> Option<usize> {
    match payload_flag_at(body) {
        Some(at) if body[at] == PAYLOAD_ERASED => Some(at + 1),
        _ => None,
    }
}

/// The bytes a record with this body keeps after compaction (its
/// compacted frame, its body without an erased payload's room; nothing for
/// padding).
pub(crate) fn live_len_of_body(body: &[u8]) -> u64 {
    if body.first() == Some(&KIND_PADDING) {
        return 0;
    }
    crate::index::COMPACT_FRAME_LEN + body.len() as u64 - payload_room(body)
}

/// The body a record of `len` bytes becomes when it is dropped: padding.
pub(crate) fn padding_body(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if let Some(first) = out.first_mut() {
        *first = KIND_PADDING;
    }
    out
}

/// Decode a record body (already checksummed).
pub(crate) fn decode_body(body: &[u8]) -> Result<Decoded, &'static str> {
    let (&kind, rest) = body.split_first().ok_or("empty record")?;
    match kind {
        KIND_ENTRY => {
            if rest.len() < 2 {
                return Err("record too short");
            }
            let header_len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let rest = &rest[2..];
            if header_len > MAX_HEADER_LEN || rest.len() < header_len + 64 + 1 {
                return Err("record too short for its header");
            }
            let header =
                Header::decode(&rest[..header_len]).map_err(|_| "header does not decode")?;
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&rest[header_len..header_len + 64]);
            let signature = ed25519_dalek::Signature::from_bytes(&sig);
            let rest = &rest[header_len + 64..];
            let payload = match rest[0] {
                PAYLOAD_ABSENT if rest.len() == 1 => Payload::Absent,
                PAYLOAD_HELD => Payload::Held(rest[1..].to_vec()),
                PAYLOAD_ERASED if rest[1..].iter().all(|&b| b == 0) => Payload::Erased,
                PAYLOAD_ERASED => return Err("erased payload not zeroed"),
                _ => return Err("bad payload flag"),
            };
            Ok(Decoded::Record(RecordBody::Entry(Entry {
                header,
                signature,
                payload,
            })))
        }
        KIND_FORK => {
            let (parts, left) = postcard::take_from_bytes::<UncheckedForkProof>(rest)
                .map_err(|_| "bad fork proof")?;
            if !left.is_empty() {
                return Err("trailing bytes after fork proof");
            }
            // One encoding per proof, like headers in entry records.
            if postcard::to_stdvec(&parts).ok().as_deref() != Some(rest) {
                return Err("fork proof not canonically encoded");
            }
            Ok(Decoded::Record(RecordBody::Fork(ForkProof::from_stored(
                parts,
            )?)))
        }
        KIND_FORGET => {
            let bytes: [u8; 32] = rest.try_into().map_err(|_| "bad forget marker")?;
            Ok(Decoded::Record(RecordBody::Forget(FeedId(bytes))))
        }
        KIND_PADDING if rest.iter().all(|&b| b == 0) => Ok(Decoded::Padding),
        KIND_PADDING => Err("padding not zeroed"),
        _ => Err("unknown record kind"),
    }
}

/// Read one frame from `reader` at `offset`. `Ok(None)` at a clean end of
/// the data; `Err(reason)` for a torn or corrupt record.
pub(crate) fn read_frame(
    reader: &mut impl Read,
    available: u64,
) -> Result<Option<(u64, Decoded)>, String> {
    if available == 0 {
        return Ok(None);
    }
    if available < FRAME_LEN {
        return Err(format!("torn frame header ({available} bytes)"));
    }
    let mut frame = [0u8; FRAME_LEN as usize];
    reader
        .read_exact(&mut frame)
        .map_err(|e| format!("read failed: {e}"))?;
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len == 0 || len > MAX_BODY_LEN {
        return Err(format!("impossible record length {len}"));
    }
    if u64::from(len) > available - FRAME_LEN {
        return Err(format!(
            "torn record: {len} bytes framed, {} present",
            available - FRAME_LEN
        ));
    }
    let mut body = vec![0u8; len as usize];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read failed: {e}"))?;
    if crc32fast::hash(&body) != crc {
        return Err("checksum mismatch".to_string());
    }
    let body = decode_body(&body).map_err(str::to_string)?;
    Ok(Some((FRAME_LEN + u64::from(len), body)))
}

/// Look for a well-formed record starting anywhere in `[from, len)` of
/// `file`. Cheap filters (record kind, header version) run before the
/// checksum, so this is fast even on large segments.
pub(crate) fn find_intact_record_after(data: &[u8], from: u64) -> Option<u64> {
    let bytes = data.get(from as usize..)?;
    let n = bytes.len();
    for i in 0..n.saturating_sub(FRAME_LEN as usize + 4) {
        let body_len =
            u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        if body_len == 0 || body_len > MAX_BODY_LEN as usize || i + 8 + body_len > n {
            continue;
        }
        let body = &bytes[i + 8..i + 8 + body_len];
        let plausible = match body[0] {
            KIND_ENTRY => body.len() > 3 && body[3] == crate::entry::HEADER_VERSION,
            KIND_FORK | KIND_FORGET => true,
            // Padding is all zeros past its kind: too easy to find by
            // accident in zeroed space to count as an intact record.
            _ => false,
        };
        if !plausible {
            continue;
        }
        let crc = u32::from_le_bytes([bytes[i + 4], bytes[i + 5], bytes[i + 6], bytes[i + 7]]);
        if crc32fast::hash(body) == crc && decode_body(body).is_ok() {
            return Some(from + i as u64);
        }
    }
    None
}
