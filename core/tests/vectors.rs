//! External ed25519 vectors against kappadb's signature rule
//! (`core/src/sig.rs`): Wycheproof, RFC 8032, ed25519-speccheck, C2SP
//! CCTV and ed25519-dalek's test vectors, stored in `tests/data/ed25519`
//! (sources and licences in its README).
//!
//! For every vector the single and the batch verdict agree, and the
//! verdict with its reason is pinned in `tests/data/ed25519/verdicts.txt`,
//! so a change to the rule shows as a diff of that file. After a deliberate
//! change, rewrite it with `KAPPADB_BLESS_VECTORS=1 cargo test -p
//! kappadb-core --test vectors` and review the diff.
//!
//! The test also states how the verdicts relate to each source's
//! expectation and to ed25519-dalek's `verify_strict`.

use curve25519_dalek::edwards::CompressedEdwardsY;
use kappadb_core::Refusal;
use kappadb_core::SigningKey;
use kappadb_core::test_utils::{verify_message, verify_messages};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const SOURCES: [(&str, &str); 5] = [
    ("wycheproof", include_str!("data/ed25519/wycheproof.txt")),
    ("rfc8032", include_str!("data/ed25519/rfc8032.txt")),
    ("speccheck", include_str!("data/ed25519/speccheck.txt")),
    ("cctv", include_str!("data/ed25519/cctv.txt")),
    ("dalek", include_str!("data/ed25519/dalek.txt")),
];

const VERDICTS: &str = include_str!("data/ed25519/verdicts.txt");

struct Vector {
    source: &'static str,
    id: &'static str,
    key: Vec<u8>,
    msg: Vec<u8>,
    sig: Vec<u8>,
    /// The source's own expectation: valid, invalid, acceptable or none.
    expect: &'static str,
    tags: Vec<&'static str>,
    seed: Option<Vec<u8>>,
}

impl Vector {
    fn has(&self, tag: &str) -> bool {
        self.tags.contains(&tag)
    }
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for (source, text) in SOURCES {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 7, "{source}: {line}");
            out.push(Vector {
                source,
                id: f[0],
                key: unhex(f[1]),
                msg: unhex(f[2]),
                sig: unhex(f[3]),
                expect: f[4],
                tags: if f[5] == "-" {
                    Vec::new()
                } else {
                    f[5].split(',').collect()
                },
                seed: (f[6] != "-").then(|| unhex(f[6])),
            });
        }
    }
    out
}

fn class(r: &Result<(), Refusal>) -> &'static str {
    match r {
        Ok(()) => "accept",
        Err(why) => match why {
            Refusal::KeyLength => "reject key-length",
            Refusal::SignatureLength => "reject signature-length",
            Refusal::KeyEncoding => "reject key-encoding",
            Refusal::KeyNotAPoint => "reject key-not-a-point",
            Refusal::KeySmallOrder => "reject key-small-order",
            Refusal::KeyTorsion => "reject key-torsion",
            Refusal::ScalarNotCanonical => "reject s-not-canonical",
            Refusal::REncoding => "reject r-encoding",
            Refusal::RNotAPoint => "reject r-not-a-point",
            Refusal::RSmallOrder => "reject r-small-order",
            Refusal::Equation => "reject equation",
            _ => "reject other",
        },
    }
}

/// ed25519-dalek's verdicts: (`verify_strict`, `verify`).
fn dalek(v: &Vector) -> (bool, bool) {
    let (Ok(key), Ok(sig)) = (
        <[u8; 32]>::try_from(v.key.as_slice()),
        <[u8; 64]>::try_from(v.sig.as_slice()),
    ) else {
        return (false, false);
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&key) else {
        return (false, false);
    };
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    (
        vk.verify_strict(&v.msg, &sig).is_ok(),
        ed25519_dalek::Verifier::verify(&vk, &v.msg, &sig).is_ok(),
    )
}

/// Whether 32 bytes decode (leniently, as ed25519-dalek does) to a point
/// with a small-order component.
fn has_torsion(bytes: &[u8]) -> bool {
    <[u8; 32]>::try_from(bytes)
        .ok()
        .and_then(|b| CompressedEdwardsY(b).decompress())
        .is_some_and(|p| !p.is_torsion_free())
}

/// Valid signatures by kappadb's own signer, to mix with each vector.
struct Filler {
    keys: Vec<([u8; 32], SigningKey)>,
}

impl Filler {
    fn new() -> Self {
        let keys = (1..=2u8)
            .map(|i| {
                let k = SigningKey::from_seed([i; 32]);
                (*k.feed_id().as_bytes(), k)
            })
            .collect();
        Filler { keys }
    }

    /// `n` valid (key, msg, sig), the messages of different lengths.
    fn make(&self, n: usize, salt: usize) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let (key, sk) = &self.keys[(i + salt) % self.keys.len()];
                let msg = vec![(i + salt) as u8; (i * 13 + salt) % 70];
                let sig = sk.sign(&msg).to_bytes().to_vec();
                (key.to_vec(), msg, sig)
            })
            .collect()
    }
}

type Triple<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn triples(items: &[(Vec<u8>, Vec<u8>, Vec<u8>)]) -> Vec<Triple<'_>> {
    items
        .iter()
        .map(|(k, m, s)| (k.as_slice(), m.as_slice(), s.as_slice()))
        .collect()
}

#[test]
fn every_vector_has_its_pinned_verdict_single_and_batch() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 1210);
    let filler = Filler::new();

    // Single verdicts.
    let single: Vec<Result<(), Refusal>> = vectors
        .iter()
        .map(|v| verify_message(&v.key, &v.msg, &v.sig))
        .collect();

    // Each vector alone among valid signatures, at a varying position.
    for (i, v) in vectors.iter().enumerate() {
        let before = filler.make(i % 5, i);
        let after = filler.make(3 + i % 4, i + 7);
        let mut batch = triples(&before);
        batch.push((&v.key, &v.msg, &v.sig));
        batch.extend(triples(&after));
        let results = verify_messages(&batch);
        assert_eq!(results.len(), batch.len());
        let at = before.len();
        assert_eq!(
            results[at], single[i],
            "{} {}: batch verdict differs from the single one",
            v.source, v.id
        );
        for (j, r) in results.iter().enumerate() {
            if j != at {
                assert_eq!(*r, Ok(()), "{} {}: filler {j} refused", v.source, v.id);
            }
        }
    }

    // Each source's vectors all in one batch, interleaved with valid ones.
    for (source, _) in SOURCES {
        let mine: Vec<usize> = (0..vectors.len())
            .filter(|&i| vectors[i].source == source)
            .collect();
        let fill = filler.make(mine.len(), 3);
        let mut batch: Vec<Triple<'_>> = Vec::new();
        let mut at = Vec::new();
        for (n, &i) in mine.iter().enumerate() {
            if n % 3 == 0 {
                batch.push((&fill[n].0, &fill[n].1, &fill[n].2));
            }
            at.push(batch.len());
            let v = &vectors[i];
            batch.push((&v.key, &v.msg, &v.sig));
        }
        let results = verify_messages(&batch);
        for (n, &i) in mine.iter().enumerate() {
            assert_eq!(results[at[n]], single[i], "{source} {}", vectors[i].id);
        }
        let fillers = (0..batch.len()).filter(|j| !at.contains(j));
        for j in fillers {
            assert_eq!(results[j], Ok(()), "{source}: filler {j}");
        }
    }

    // The pinned verdicts.
    let mut got = String::new();
    for (v, r) in vectors.iter().zip(&single) {
        writeln!(got, "{} {} {}", v.source, v.id, class(r)).unwrap();
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ed25519/verdicts.txt"
    );
    if std::env::var_os("KAPPADB_BLESS_VECTORS").is_some() {
        std::fs::write(path, &got).unwrap();
        return;
    }
    let want: Vec<&str> = VERDICTS.lines().collect();
    let got_lines: Vec<&str> = got.lines().collect();
    let diff: Vec<String> = got_lines
        .iter()
        .zip(&want)
        .filter(|(g, w)| g != w)
        .take(20)
        .map(|(g, w)| format!("pinned: {w}\n   now: {g}"))
        .collect();
    assert!(
        diff.is_empty() && got_lines.len() == want.len(),
        "verdicts differ from tests/data/ed25519/verdicts.txt ({} lines pinned, {} now):\n{}\n\
         if the rule changed on purpose, rerun with KAPPADB_BLESS_VECTORS=1 and review the diff",
        want.len(),
        got_lines.len(),
        diff.join("\n")
    );
}

#[test]
fn verdicts_relate_to_the_sources_and_to_ed25519_dalek() {
    let vectors = vectors();
    // (total, kappadb accepts, agrees with source, strict accepts,
    //  verify accepts, kappadb accepts & strict refuses, strict accepts &
    //  kappadb refuses)
    let mut table: BTreeMap<&str, [usize; 7]> = BTreeMap::new();
    for v in &vectors {
        let ours = verify_message(&v.key, &v.msg, &v.sig);
        let (strict, lax) = dalek(v);
        let ok = ours.is_ok();
        let what = format!("{} {}: {}", v.source, v.id, class(&ours));

        // The sources' expectations, where they have one.
        match v.expect {
            "valid" => assert!(ok, "{what}, the source says valid"),
            "invalid" => assert!(!ok, "{what}, the source says invalid"),
            "none" => {}
            other => panic!("{what}: unexpected expectation {other}"),
        }
        // Known-answer vectors: the seed makes the key and the signature.
        if let Some(seed) = &v.seed {
            let sk = SigningKey::from_seed(seed.as_slice().try_into().unwrap());
            assert_eq!(sk.feed_id().as_bytes().as_slice(), v.key, "{what}");
            assert_eq!(sk.sign(&v.msg).to_bytes().as_slice(), v.sig, "{what}");
        }

        // A key of small or mixed order is refused, as a key.
        if v.key.len() == 32 && has_torsion(&v.key) {
            assert!(ours.is_err_and(Refusal::is_key), "{what}: torsion in A");
        }
        // Every signature verify_strict accepts is accepted, unless its
        // key has a small-order component (rule 1).
        if strict {
            assert!(
                ok || ours == Err(Refusal::KeyTorsion),
                "{what}: verify_strict accepts"
            );
        }
        // What is accepted here and refused by verify_strict has an R
        // with a small-order component (the cofactored equation).
        if ok && !strict {
            assert!(has_torsion(&v.sig[..32]), "{what}: verify_strict refuses");
        }
        // CCTV: accepted iff no flag touches A, and R is canonical and not
        // of small order (every CCTV vector passes a cofactored equation).
        if v.source == "cctv" {
            let refused_flag = ["loA", "lcA", "ncA", "loR", "ncR"].iter().any(|f| v.has(f));
            assert_eq!(ok, !refused_flag, "{what} {:?}", v.tags);
            if v.has("lcA") || v.has("loA") || v.has("ncA") {
                assert!(ours.is_err_and(Refusal::is_key), "{what}");
            }
        }
        // speccheck: the mixed- and small-order keys are refused as keys,
        // and S > L as a non-canonical scalar.
        if v.source == "speccheck" {
            let key_case = v
                .tags
                .iter()
                .any(|t| t.starts_with("A=small") || *t == "A=mixed");
            if key_case {
                assert!(ours.is_err_and(Refusal::is_key), "{what}");
            } else {
                assert_eq!(ours, Err(Refusal::ScalarNotCanonical), "{what}");
            }
        }

        let agree = match v.expect {
            "valid" => ok,
            "invalid" => !ok,
            _ => true,
        };
        let row = table.entry(v.source).or_default();
        row[0] += 1;
        row[1] += usize::from(ok);
        row[2] += usize::from(agree && v.expect != "none");
        row[3] += usize::from(strict);
        row[4] += usize::from(lax);
        row[5] += usize::from(ok && !strict);
        row[6] += usize::from(strict && !ok);
    }
    println!(
        "source      total  kappadb  agrees-with-source  strict  verify  kappadb-only  strict-only"
    );
    for (source, r) in &table {
        println!(
            "{source:<11} {:>5}  {:>7}  {:>18}  {:>6}  {:>6}  {:>12}  {:>11}",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6]
        );
    }
}
