//! Property tests of the entry format and validation rules.

use kappadb_core::entry::HEADER_VERSION;
use kappadb_core::validate::{validate_entry, validate_link};
use kappadb_core::{Entry, EntryError, EntryId, FeedId, Hash, Header, Payload, SigningKey};
use proptest::prelude::*;

const LIMIT: u32 = 1 << 20;

fn arb_header() -> impl Strategy<Value = Header> {
    (
        any::<[u8; 32]>(),
        1u64..u64::MAX,
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u32>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(author, seq, prev, timestamp, payload_len, hash)| Header {
            version: HEADER_VERSION,
            author: FeedId(author),
            seq,
            prev: (seq != 1).then_some(EntryId(prev)),
            timestamp,
            payload_len,
            payload_hash: Hash(hash),
        })
}

/// A valid signed entry at some seq with its predecessor's id.
fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        any::<[u8; 32]>(),
        1u64..1_000_000,
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(seed, seq, prev, timestamp, payload)| {
            let key = SigningKey::from_seed(seed);
            let header = Header {
                version: HEADER_VERSION,
                author: key.feed_id(),
                seq,
                prev: (seq != 1).then_some(EntryId(prev)),
                timestamp,
                payload_len: payload.len() as u32,
                payload_hash: Hash::of(&payload),
            };
            let signature = key.sign(&header.id().0);
            Entry {
                header,
                signature,
                payload: Payload::Held(payload),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn header_encode_decode_round_trip(h in arb_header()) {
        let bytes = h.encode();
        prop_assert_eq!(Header::decode(&bytes).unwrap(), h.clone());
        prop_assert_eq!(Header::decode(&bytes).unwrap().id(), h.id());
    }

    #[test]
    fn truncated_or_garbage_headers_never_panic(h in arb_header(), cut in 0usize..200, junk in proptest::collection::vec(any::<u8>(), 0..200)) {
        let bytes = h.encode();
        let cut = cut.min(bytes.len());
        let _ = Header::decode(&bytes[..cut]);
        let _ = Header::decode(&junk);
    }

    #[test]
    fn valid_entries_validate(e in arb_entry()) {
        prop_assert!(validate_entry(&e, LIMIT).is_ok());
    }

    #[test]
    fn any_single_field_change_is_rejected(e in arb_entry(), field in 0usize..7, delta in 1u64..1000) {
        let mut m = e.clone();
        let h = &mut m.header;
        let expect_sig_error = match field {
            0 => { h.version = h.version.wrapping_add(delta as u8).max(2); false }
            1 => { h.author.0[(delta % 32) as usize] ^= 1 + (delta as u8 % 255); true }
            2 => { h.seq = h.seq.wrapping_add(delta).max(2); h.prev = h.prev.or(Some(EntryId([1; 32]))); true }
            3 => { h.prev = Some(EntryId([delta as u8; 32])); if h.seq == 1 { h.seq = 2 } true }
            4 => { h.timestamp = h.timestamp.wrapping_add(delta); true }
            5 => { h.payload_len = h.payload_len.wrapping_add(delta as u32); m.payload = Payload::Absent; true }
            _ => { h.payload_hash.0[(delta % 32) as usize] ^= 0x80; m.payload = Payload::Absent; true }
        };
        let res = validate_entry(&m, u32::MAX);
        match field {
            0 => prop_assert!(matches!(res, Err(EntryError::UnsupportedVersion(_))), "{:?}", res),
            1 => prop_assert!(matches!(res, Err(EntryError::BadSignature { .. }) | Err(EntryError::BadAuthor(_))), "{:?}", res),
            _ => {
                prop_assert!(expect_sig_error);
                prop_assert!(matches!(res, Err(EntryError::BadSignature { .. })), "{:?}", res);
            }
        }
    }

    #[test]
    fn payload_change_is_rejected(e in arb_entry(), flip in any::<u8>()) {
        let mut m = e.clone();
        let Payload::Held(p) = &mut m.payload else {
            panic!("arb_entry makes held payloads");
        };
        if p.is_empty() {
            p.push(flip);
            let res = validate_entry(&m, LIMIT);
            prop_assert!(matches!(res, Err(EntryError::PayloadLenMismatch { .. })), "{:?}", res);
        } else {
            p[0] ^= flip | 1;
            let res = validate_entry(&m, LIMIT);
            prop_assert!(matches!(res, Err(EntryError::PayloadHashMismatch { .. })), "{:?}", res);
        }
    }

    #[test]
    fn links_only_accept_the_next_seq(e in arb_entry(), head_seq in 0u64..1_000_001) {
        let head = (head_seq > 0).then(|| (head_seq, e.header.prev.unwrap_or(EntryId([0; 32]))));
        let ok = validate_link(head, &e.header).is_ok();
        prop_assert_eq!(ok, e.header.seq == head_seq + 1);
    }
}
