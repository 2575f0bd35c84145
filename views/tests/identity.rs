//! Identity-resolved views: two devices of one identity write like one
//! author, a revocation that arrives late hides what it cuts off, and a
//! database that never saw the identity ops answers author by author.

mod common;

use common::{create_db, indexer, put};
use kappadb_core::identity::{Delegation, IdentityKey, Revocation};
use kappadb_core::test_utils::TestPeer;
use kappadb_views::{IdentityFilter, TimelineQuery};
use serde_json::json;

#[test]
fn two_devices_of_one_identity_write_like_one_author_until_revoked() {
    let identity = IdentityKey::from_seed([0x1d; 32]);
    let mut laptop = TestPeer::new(1);
    let mut desktop = TestPeer::new(2);
    let mut id_feed = TestPeer {
        key: identity.signing_key().clone(),
        entries: Vec::new(),
    };
    // Neither device links the other's write: as strangers, two heads.
    let a1 = laptop.make(10, put("color", json!("red"), &[]));
    let b1 = desktop.make(20, put("color", json!("blue"), &[]));
    let b2 = desktop.make(30, put("color", json!("green"), &[]));
    let dir = tempfile::tempdir().unwrap();
    let db = create_db(dir.path(), 9);
    db.ingest(vec![a1.clone(), b1.clone(), b2.clone()]).unwrap();
    let ix = indexer(&db, 2);
    ix.catch_up().unwrap();
    let kv = ix.kv().unwrap();
    assert_eq!(kv.heads("color").unwrap().len(), 2);

    // The identity links both devices: one author, the latest write wins.
    let d1 = id_feed.make(1, Delegation::new(identity.id(), &laptop.key).encode());
    let d2 = id_feed.make(2, Delegation::new(identity.id(), &desktop.key).encode());
    db.ingest(vec![d1, d2]).unwrap();
    ix.catch_up().unwrap();
    let ids = ix.identities().unwrap();
    assert_eq!(ids.resolve(&desktop.key.feed_id()), identity.id());
    let heads = kv.resolved_heads(&db, &ids, "color").unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(heads[0].id, b2.id());
    assert_eq!(
        kv.resolved_get(&db, &ids, "color").unwrap(),
        Some(json!("green"))
    );
    // Author-level answers are unchanged.
    assert_eq!(kv.heads("color").unwrap().len(), 2);

    // The desktop is revoked from seq 2, after it wrote seq 2: its
    // "green" leaves identity-resolved results, "blue" stays.
    let r = id_feed.make(
        3,
        Revocation {
            device: desktop.key.feed_id(),
            from: 2,
        }
        .encode(),
    );
    db.ingest(vec![r]).unwrap();
    ix.catch_up().unwrap();
    let ids = ix.identities().unwrap();
    assert_eq!(
        kv.resolved_get(&db, &ids, "color").unwrap(),
        Some(json!("blue"))
    );
    let filter = IdentityFilter {
        ids: &ids,
        identity: Some(identity.id()),
    };
    let seen: Vec<_> = ix
        .timeline()
        .unwrap()
        .query_resolved(&TimelineQuery::default(), &filter)
        .unwrap()
        .into_iter()
        .map(|i| (i.author, i.seq))
        .collect();
    assert_eq!(
        seen,
        vec![(desktop.key.feed_id(), 1), (laptop.key.feed_id(), 1)]
    );
    // The identity view's digest is a function of the set of ops.
    let digest = ix.digest("identity").unwrap();
    ix.rebuild("identity", &mut |_, _| {}).unwrap();
    assert_eq!(ix.digest("identity").unwrap(), digest);
}

#[test]
fn a_forked_identity_feed_is_surfaced_and_counts_only_below_the_fork() {
    use kappadb_core::identity::IdentityOp;
    let identity = IdentityKey::from_seed([0x2d; 32]);
    let laptop = TestPeer::new(11);
    let desktop = TestPeer::new(12);
    let phone = TestPeer::new(13);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = create_db(dir_a.path(), 21);
    let b = create_db(dir_b.path(), 22);
    // Both hold the identity key (imported twice) and write seq 2 on
    // their own: the identity feed forks.
    let first = IdentityOp::Delegate(Delegation::new(identity.id(), &laptop.key));
    a.append_identity(&identity, &first).unwrap();
    b.ingest(
        a.feed_range(&identity.id(), 1, 1)
            .map(Result::unwrap)
            .collect(),
    )
    .unwrap();
    a.append_identity(
        &identity,
        &IdentityOp::Delegate(Delegation::new(identity.id(), &desktop.key)),
    )
    .unwrap();
    b.append_identity(
        &identity,
        &IdentityOp::Delegate(Delegation::new(identity.id(), &phone.key)),
    )
    .unwrap();
    let from_b: Vec<_> = b
        .feed_range(&identity.id(), 1, 2)
        .map(Result::unwrap)
        .collect();
    let report = a.ingest(from_b).unwrap();
    assert_eq!(report.forks.len(), 1);
    assert_eq!(a.fork(&identity.id()).unwrap().seq, 2);
    // Refused from now on, with a typed reason.
    assert!(matches!(
        a.append_identity(&identity, &first),
        Err(kappadb_core::AppendError::Rejected(
            kappadb_core::EntryError::Identity(kappadb_core::identity::IdentityError::Forked {
                fork_seq: 2,
                ..
            })
        ))
    ));
    let ix = indexer(&a, 4);
    ix.catch_up().unwrap();
    let ids = ix.identities().unwrap();
    // What both branches agree on counts; neither branch's seq 2 does.
    assert_eq!(ids.resolve(&laptop.key.feed_id()), identity.id());
    assert_eq!(ids.resolve(&desktop.key.feed_id()), desktop.key.feed_id());
    assert_eq!(ids.resolve(&phone.key.feed_id()), phone.key.feed_id());
}
