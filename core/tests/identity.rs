//! Identity ops in a database: appended with an identity key, refused
//! with typed reasons, and a forged delegation from a peer never stored.

use kappadb_core::identity::{
    Delegation, IdentityError, IdentityKey, IdentityOp, Revocation, consent_message,
};
use kappadb_core::test_utils::TestPeer;
use kappadb_core::{AppendError, CreateOptions, Db, Entry, EntryError, SigningKey};

fn db(dir: &std::path::Path, seed: u8) -> Db {
    Db::create(
        dir,
        CreateOptions {
            signing_key: Some(SigningKey::from_seed([seed; 32])),
            ..Default::default()
        },
    )
    .unwrap()
}

fn identity_error(e: AppendError) -> IdentityError {
    match e {
        AppendError::Rejected(EntryError::Identity(e)) => e,
        other => panic!("expected an identity refusal, got {other:?}"),
    }
}

#[test]
fn identity_ops_append_and_refuse_with_typed_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path(), 1);
    let identity = IdentityKey::from_seed([7; 32]);
    let device = db.signing_key().clone();
    let other = SigningKey::from_seed([9; 32]);

    let d = IdentityOp::Delegate(Delegation::new(identity.id(), &device));
    assert_eq!(db.append_identity(&identity, &d).unwrap().0, 1);
    // Revoking a feed that was never delegated.
    let r_other = IdentityOp::Revoke(Revocation {
        device: other.feed_id(),
        from: 1,
    });
    assert_eq!(
        identity_error(db.append_identity(&identity, &r_other).unwrap_err()),
        IdentityError::NotADevice(other.feed_id())
    );
    let r = IdentityOp::Revoke(Revocation {
        device: device.feed_id(),
        from: 4,
    });
    assert_eq!(db.append_identity(&identity, &r).unwrap().0, 2);
    // A revoked device cannot be delegated again.
    assert_eq!(
        identity_error(db.append_identity(&identity, &d).unwrap_err()),
        IdentityError::Revoked {
            device: device.feed_id(),
            from: 4
        }
    );
    // A forged consent.
    let mut forged = Delegation::new(identity.id(), &other);
    forged.device_sig = device.sign(&consent_message(&identity.id(), &other.feed_id()));
    assert!(matches!(
        identity_error(
            db.append_identity(&identity, &IdentityOp::Delegate(forged))
                .unwrap_err()
        ),
        IdentityError::BadConsent { .. }
    ));
    assert_eq!(db.head(&identity.id()).unwrap().seq, 2);
    let ops = db.identity_ops(&identity.id()).unwrap();
    assert_eq!(ops.len(), 2);
    assert!(db.verify(&mut |_, _| {}).unwrap().problems.is_empty());
}

#[test]
fn a_forged_delegation_from_a_peer_is_refused_and_nothing_of_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path(), 1);
    let victim = SigningKey::from_seed([3; 32]);
    // A thief makes its own identity feed claim the victim's feed, with a
    // consent it signed itself, and sends it with an honest entry first.
    let mut thief = TestPeer::new(44);
    let honest = thief.make(1, b"{\"type\":\"note\"}".to_vec());
    let mut d = Delegation::new(thief.key.feed_id(), &victim);
    d.device_sig = thief
        .key
        .sign(&consent_message(&thief.key.feed_id(), &victim.feed_id()));
    let forged = thief.make(2, d.encode());
    let report = db
        .ingest_page(vec![honest.clone(), forged.clone()])
        .unwrap();
    assert!(report.dropped);
    assert!(matches!(
        report.rejected[0].1,
        EntryError::Identity(IdentityError::BadConsent { .. })
    ));
    assert_eq!(report.rejected[0].1.reason(), "forged_delegation");
    // Nothing of the page is stored, not even the honest entry before it.
    assert!(db.head(&thief.key.feed_id()).is_none());
    // Best-effort ingest stores the honest entry and refuses the forgery.
    let report = db.ingest(vec![honest, forged]).unwrap();
    assert_eq!(report.accepted, 1);
    assert_eq!(db.head(&thief.key.feed_id()).unwrap().seq, 1);
    // A genuine consent replayed into the thief's feed does not verify
    // either.
    let me = IdentityKey::from_seed([8; 32]);
    let genuine = Delegation::new(me.id(), &victim);
    let replay = Entry::sign(&thief.key, thief.entries.first(), 3, genuine.encode());
    let report = db.ingest(vec![replay]).unwrap();
    assert_eq!(report.accepted, 0);
    assert!(db.identity_ops(&thief.key.feed_id()).unwrap().is_empty());
}
