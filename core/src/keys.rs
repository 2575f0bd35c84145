//! Identities and secrets: the feed key, its public half ([`FeedId`]) and the
//! network key.
//!
//! A peer's identity is an ed25519 keypair. The public key is the [`FeedId`]
//! of the peer's feed (and, in `kappadb-net`, its libp2p identity). The text
//! form of a `FeedId` is 64 lowercase hex digits: copy-pasteable, with no
//! characters that look alike; [`FeedId::fmt_short`] gives the first 8 for
//! logs.
//!
//! Secrets live in small files in the database directory with mode 0600. A
//! key file that other users can read is refused with an error that says how
//! to fix it. Secret bytes never appear in `Debug` output or error messages.
//!
//! ```
//! use kappadb_core::{FeedId, SigningKey};
//! let key = SigningKey::from_seed([7; 32]);
//! let id: FeedId = key.feed_id();
//! assert_eq!(id.to_string().parse::<FeedId>().unwrap(), id);
//! ```

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

/// Length in bytes of every key and hash in kappadb.
pub const KEY_LEN: usize = 32;

/// The public key of a feed's author, which names the feed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FeedId(pub [u8; KEY_LEN]);

impl FeedId {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The first 8 hex digits, for log lines.
    pub fn fmt_short(&self) -> String {
        hex(&self.0[..4])
    }

    /// The ed25519 verifying key, or an error if the bytes are not an
    /// author key: the canonical encoding of a curve point
    /// ([`crate::canonical_encoding`]) in the prime-order subgroup
    /// other than the identity (neither of small order nor with a
    /// small-order component). This costs a scalar multiplication; the
    /// signature checks cache its result per key.
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
        crate::sig::key_point(&self.0)
            .map(ed25519_dalek::VerifyingKey::from)
            .map_err(|_| KeyError::InvalidPublicKey)
    }
}

impl fmt::Display for FeedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for FeedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FeedId({})", self.fmt_short())
    }
}

impl FromStr for FeedId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s.trim())
            .map(FeedId)
            .ok_or_else(|| KeyError::BadFeedId {
                input: truncate_for_error(s),
            })
    }
}

/// Errors about keys and key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Text that should be a feed id is not 64 hex digits.
    #[error("'{input}' is not a feed id: expected 64 hex digits (as printed by `kappa id`)")]
    BadFeedId {
        /// The offending input, shortened.
        input: String,
    },
    /// The bytes are not a usable ed25519 public key.
    #[error("the feed id is not a valid ed25519 public key")]
    InvalidPublicKey,
    /// A key file can be read by other users.
    #[error(
        "key file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}` and try again"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file has the wrong size or content.
    #[error("key file {path} is malformed: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The OS could not provide randomness.
    #[error("the operating system could not provide random bytes: {0}")]
    Random(String),
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The secret half of a feed identity. Signs entry ids.
///
/// `Debug` prints only the public key.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self::from_seed(random_bytes()?))
    }

    /// A key from a 32-byte secret (tests and key files).
    pub fn from_seed(seed: [u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The 32 secret bytes. Handle with care.
    pub fn to_seed(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// The public key that names this key's feed.
    pub fn feed_id(&self) -> FeedId {
        FeedId(self.0.verifying_key().to_bytes())
    }

    /// Sign a message (kappadb signs entry ids only).
    pub fn sign(&self, msg: &[u8]) -> ed25519_dalek::Signature {
        self.0.sign(msg)
    }

    /// Load a key file written by [`SigningKey::save`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        read_secret_file(path).map(Self::from_seed)
    }

    /// Write the key to a new file with mode 0600. Refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &self.to_seed())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.feed_id().fmt_short())
    }
}

/// The 32-byte secret that defines which network a database belongs to.
///
/// Peers without it cannot complete a connection (libp2p pnet). `Debug`
/// hides it; `to_hex` is for invites only.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey([u8; KEY_LEN]);

impl NetworkKey {
    /// A fresh random network key.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self(random_bytes()?))
    }

    /// A network key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Hex text, for invite strings.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex32(s).map(Self)
    }

    /// A public, non-secret tag derived from the key (for gossip topics and
    /// protocol names): blake3 in derive-key mode.
    pub fn public_tag(&self) -> [u8; KEY_LEN] {
        blake3::derive_key("kappadb 2026 network tag v1", &self.0)
    }

    /// Load a key file written by [`NetworkKey::save`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        read_secret_file(path).map(Self)
    }

    /// Write the key to a new file with mode 0600. Refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_secret_file(path, &self.0)
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

fn random_bytes() -> Result<[u8; KEY_LEN], KeyError> {
    let mut seed = [0u8; KEY_LEN];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(seed)
}

fn write_secret_file(path: &Path, bytes: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(io)?;
    let mut text = hex(bytes);
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

fn read_secret_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if meta.len() > 256 {
        return Err(KeyError::Malformed {
            path: path.to_path_buf(),
            reason: "file is too large to be a key",
        });
    }
    let text = fs::read_to_string(path).map_err(io)?;
    parse_hex32(text.trim()).ok_or_else(|| KeyError::Malformed {
        path: path.to_path_buf(),
        reason: "expected 64 hex digits",
    })
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Parse exactly 64 hex digits (either case) into 32 bytes.
pub fn parse_hex32(s: &str) -> Option<[u8; KEY_LEN]> {
    let s = s.as_bytes();
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Parse exactly 128 hex digits (either case) into 64 bytes (a signature).
pub fn parse_hex64(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 || !s.is_ascii() {
        return None;
    }
    let (hi, lo) = s.split_at(64);
    let (hi, lo) = (parse_hex32(hi)?, parse_hex32(lo)?);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&hi);
    out[32..].copy_from_slice(&lo);
    Some(out)
}

fn truncate_for_error(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_id_round_trips_through_text() {
        let id = SigningKey::from_seed([1; 32]).feed_id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<FeedId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<FeedId>().unwrap(), id);
        assert_eq!(id.fmt_short(), text[..8]);
    }

    #[test]
    fn feed_id_rejects_bad_text() {
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            "é",
        ] {
            let err = bad.parse::<FeedId>().unwrap_err();
            assert!(matches!(err, KeyError::BadFeedId { .. }), "{bad}");
        }
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let key = SigningKey::generate().unwrap();
        key.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(SigningKey::load(&path).unwrap().feed_id(), key.feed_id());
        assert!(key.save(&path).is_err(), "must refuse to overwrite");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        SigningKey::generate().unwrap().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SigningKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::InsecurePermissions { .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(&path).unwrap().write_all(b"not a key").unwrap();
        assert!(matches!(
            SigningKey::load(&path).unwrap_err(),
            KeyError::Malformed { .. }
        ));
    }

    #[test]
    fn debug_hides_secrets() {
        let key = SigningKey::from_seed([9; 32]);
        let seed_hex = hex(&key.to_seed());
        assert!(!format!("{key:?}").contains(&seed_hex));
        let net = NetworkKey::from_bytes([3; 32]);
        assert!(!format!("{net:?}").contains(&net.to_hex()));
    }
}
