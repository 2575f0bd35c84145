//! The record format: how an entry or a fork proof is laid out in the log
//! (see the module docs of [`crate::log`]), and reading one frame back.

use std::io::Read;

use super::{FRAME_LEN, KIND_ENTRY, KIND_FORK, MAX_BODY_LEN, RecordBody};
use crate::entry::{Entry, ForkProof, Header, MAX_HEADER_LEN, UncheckedForkProof};

/// Encode a record body for an entry.
pub(crate) fn encode_entry_body(entry: &Entry, out: &mut Vec<u8>) {
    let header = entry.header.encode();
    out.push(KIND_ENTRY);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&entry.signature.to_bytes());
    match &entry.payload {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(p);
        }
        None => out.push(0),
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
    }
    let body_len = (out.len() - start) as u64 - FRAME_LEN;
    let crc = crc32fast::hash(&out[start + FRAME_LEN as usize..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decode a record body (already checksummed).
pub(crate) fn decode_body(body: &[u8]) -> Result<RecordBody, &'static str> {
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
                0 if rest.len() == 1 => None,
                1 => Some(rest[1..].to_vec()),
                _ => return Err("bad payload flag"),
            };
            Ok(RecordBody::Entry(Entry {
                header,
                signature,
                payload,
            }))
        }
        KIND_FORK => {
            let (parts, left) = postcard::take_from_bytes::<UncheckedForkProof>(rest)
                .map_err(|_| "bad fork proof")?;
            if !left.is_empty() {
                return Err("trailing bytes after fork proof");
            }
            Ok(RecordBody::Fork(ForkProof::from_stored(parts)?))
        }
        _ => Err("unknown record kind"),
    }
}

/// Read one frame from `reader` at `offset`. `Ok(None)` at a clean end of
/// the data; `Err(reason)` for a torn or corrupt record.
pub(crate) fn read_frame(
    reader: &mut impl Read,
    available: u64,
) -> Result<Option<(u64, RecordBody)>, String> {
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
            KIND_FORK => true,
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
