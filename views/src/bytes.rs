//! [`Bytes`]: the values a view reads and writes ([`crate::ViewTx`],
//! [`crate::ViewReader`]), so that a view's code depends on this crate and
//! not on the store beneath it.
//!
//! A `Bytes` wraps the store's own buffer, so handing a value from the
//! store to a fold, from a fold to the commit, and into the generation's
//! read cache never copies it: a clone is a reference count (or, for values
//! of at most 22 bytes, a copy of them inline).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// An immutable byte string, cheap to clone. Reads as a `[u8]`
/// (`Deref`, `AsRef`); made from a `Vec<u8>`, a slice, an array or a
/// `&str`.
#[derive(Clone, Default)]
pub struct Bytes(sled::IVec);

impl Bytes {
    /// A value as the store returned it.
    pub(crate) fn from_store(value: sled::IVec) -> Self {
        Self(value)
    }

    /// The value for the store.
    pub(crate) fn store_value(&self) -> sled::IVec {
        self.0.clone()
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(value: Vec<u8>) -> Self {
        Self(value.into())
    }
}

impl From<&[u8]> for Bytes {
    fn from(value: &[u8]) -> Self {
        Self(value.into())
    }
}

impl<const N: usize> From<&[u8; N]> for Bytes {
    fn from(value: &[u8; N]) -> Self {
        Self(value[..].into())
    }
}

impl From<&str> for Bytes {
    fn from(value: &str) -> Self {
        Self(value.into())
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(value: Bytes) -> Self {
        value.to_vec()
    }
}

impl<T: AsRef<[u8]> + ?Sized> PartialEq<T> for Bytes {
    fn eq(&self, other: &T) -> bool {
        **self == *other.as_ref()
    }
}

impl Eq for Bytes {}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Self) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_compares_and_converts_like_its_bytes() {
        let long = Bytes::from(vec![7u8; 100]);
        let copy = long.clone();
        assert!(std::ptr::eq(long.as_ptr(), copy.as_ptr()), "clone shares");
        assert_eq!(copy, vec![7u8; 100]);
        assert_eq!(Bytes::from(b"ab"), *b"ab");
        assert_eq!(Bytes::from("ab"), Bytes::from(&b"ab"[..]));
        let mut sorted = vec![Bytes::from("b"), Bytes::from("a")];
        sorted.sort();
        assert_eq!(sorted, [b"a", b"b"]);
        assert_eq!(format!("{:?}", Bytes::from(b"\x01\x02")), "[1, 2]");
        assert_eq!(Vec::from(Bytes::from("xy")), b"xy".to_vec());
        assert!(Bytes::default().is_empty());
    }
}
