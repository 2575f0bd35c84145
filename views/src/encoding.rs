//! Order-preserving key encodings shared by the built-in views, and the
//! canonical JSON text they store. These bytes are part of every view's
//! digest: changing them means bumping the versions of the views using them.
//!
//! ```text
//! escaped(bytes) = bytes with 0x00 -> 0x00 0xFF, then 0x00 0x01
//!                  (prefix-free; sorts like the raw bytes)
//! scalar(null)   = 0x10
//! scalar(false)  = 0x20            scalar(true) = 0x21
//! scalar(number) = 0x30 | f64 bits, sign-flipped, big endian
//! scalar(string) = 0x40 | escaped(utf-8)
//! entry key      = timestamp BE (8) | author (32) | u64 BE (8)
//!                  (the u64 is the seq in a field index list, seq / 64 in
//!                  a bucket key: module `bucket`; in a timeline key the
//!                  timestamp is its slot, timestamp >> 16: module `slot`)
//! ```
//!
//! So null < false < true < numbers (numerically) < strings (bytewise), and
//! no encoded scalar is a prefix of another, which makes "all keys of this
//! value" a prefix scan.

use kappadb_core::FeedId;
use serde_json::Value;

const TAG_NULL: u8 = 0x10;
const TAG_FALSE: u8 = 0x20;
const TAG_TRUE: u8 = 0x21;
const TAG_NUMBER: u8 = 0x30;
const TAG_STRING: u8 = 0x40;

/// Length of an encoded `(timestamp, author, seq)`.
pub(crate) const ENTRY_KEY_LEN: usize = 8 + 32 + 8;

/// Append `bytes` escaped and terminated (see the module docs).
pub(crate) fn put_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    put_escaped_prefix(out, bytes);
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Append `bytes` escaped but not terminated: the prefix of every escaped
/// string that starts with `bytes`.
pub(crate) fn put_escaped_prefix(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
}

/// Read an escaped, terminated string from the front of `input`; returns
/// it and the rest.
pub(crate) fn take_escaped(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x01) => return Some((out, &input[i + 2..])),
            _ => return None,
        }
    }
    None
}

/// Append `(timestamp, author, seq)` so that keys sort by that triple.
pub(crate) fn put_entry_key(out: &mut Vec<u8>, timestamp: u64, author: &FeedId, seq: u64) {
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(author.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

/// Read `(timestamp, author, seq)` from exactly [`ENTRY_KEY_LEN`] bytes.
pub(crate) fn read_entry_key(bytes: &[u8]) -> Option<(u64, FeedId, u64)> {
    if bytes.len() != ENTRY_KEY_LEN {
        return None;
    }
    let timestamp = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    let author = FeedId(bytes[8..40].try_into().ok()?);
    let seq = u64::from_be_bytes(bytes[40..48].try_into().ok()?);
    Some((timestamp, author, seq))
}

/// Append the order-preserving encoding of a JSON scalar. Returns `false`
/// (and appends nothing) for arrays and objects.
///
/// Numbers are compared as `f64`: integers beyond 2^53 lose precision.
pub(crate) fn put_scalar(out: &mut Vec<u8>, value: &Value) -> bool {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Bool(false) => out.push(TAG_FALSE),
        Value::Bool(true) => out.push(TAG_TRUE),
        Value::Number(n) => {
            let Some(f) = n.as_f64() else { return false };
            out.push(TAG_NUMBER);
            out.extend_from_slice(&f64_key(f));
        }
        Value::String(s) => {
            out.push(TAG_STRING);
            put_escaped(out, s.as_bytes());
        }
        Value::Array(_) | Value::Object(_) => return false,
    }
    true
}

/// Read an encoded scalar from the front of `input`; returns it and the
/// rest.
pub(crate) fn take_scalar(input: &[u8]) -> Option<(Value, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    match tag {
        TAG_NULL => Some((Value::Null, rest)),
        TAG_FALSE => Some((Value::Bool(false), rest)),
        TAG_TRUE => Some((Value::Bool(true), rest)),
        TAG_NUMBER => {
            let bytes: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            let f = f64_from_key(bytes);
            // Show integral values as integers, as they were most likely
            // written.
            let value = if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                Value::from(f as i64)
            } else {
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            };
            Some((value, &rest[8..]))
        }
        TAG_STRING => {
            let (bytes, rest) = take_escaped(rest)?;
            Some((Value::String(String::from_utf8(bytes).ok()?), rest))
        }
        _ => None,
    }
}

fn f64_key(f: f64) -> [u8; 8] {
    // -0.0 and 0.0 are one number.
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let bits = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    bits.to_be_bytes()
}

fn f64_from_key(bytes: [u8; 8]) -> f64 {
    let bits = u64::from_be_bytes(bytes);
    let bits = if bits >> 63 == 1 {
        bits & !(1 << 63)
    } else {
        !bits
    };
    f64::from_bits(bits)
}

/// The smallest key greater than every key starting with `prefix`, or
/// `None` when there is none (the prefix is all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// JSON text with object keys sorted at every level, so that a value has
/// one text whatever the order its author wrote it in (and whatever
/// serde_json features are on).
pub(crate) fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(put_scalar(&mut out, v));
        out
    }

    #[test]
    fn scalar_order_matches_json_order() {
        let values = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e300),
            json!(-5),
            json!(-0.5),
            json!(0),
            json!(0.25),
            json!(1),
            json!(2),
            json!(10),
            json!(1e300),
            json!(""),
            json!("\u{0}"),
            json!("a"),
            json!("a\u{0}"),
            json!("ab"),
            json!("b"),
        ];
        for pair in values.windows(2) {
            assert!(enc(&pair[0]) < enc(&pair[1]), "{} < {}", pair[0], pair[1]);
        }
        for v in &values {
            let bytes = enc(v);
            let (back, rest) = take_scalar(&bytes).unwrap();
            assert!(rest.is_empty());
            assert_eq!(enc(&back), bytes);
        }
        assert_eq!(enc(&json!(-0.0)), enc(&json!(0)));
    }

    #[test]
    fn escaped_strings_are_prefix_free() {
        let mut a = Vec::new();
        put_escaped(&mut a, b"a");
        let mut ab = Vec::new();
        put_escaped(&mut ab, b"ab");
        assert!(!ab.starts_with(&a));
        let mut p = Vec::new();
        put_escaped_prefix(&mut p, b"a");
        assert!(ab.starts_with(&p) && a.starts_with(&p));
        let (back, rest) = take_escaped(&ab).unwrap();
        assert_eq!(back, b"ab");
        assert!(rest.is_empty());
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,2],"c":null}}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"d":[1,2]},"b":1}"#);
    }

    #[test]
    fn prefix_end_increments() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}
