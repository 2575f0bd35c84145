//! View errors: what can go wrong registering, folding and querying views.
//!
//! Payloads that are not JSON, or not of a view's shape, are not errors:
//! views skip them and count them in their checkpoint. The variants here
//! stop an operation.

use std::time::Duration;

use kappadb_core::StoreError;

/// An error from the indexer or a view.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// No view of that name is registered.
    #[error("unknown view {0:?}; `kappa view list` shows the registered views")]
    UnknownView(String),
    /// A view of that name is already registered.
    #[error("a view named {0:?} is already registered")]
    ViewExists(String),
    /// A view name that cannot be used.
    #[error("bad view name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A JSON pointer that is not empty and does not start with `/`.
    #[error("bad json pointer {0:?}: it must be empty or start with '/'")]
    BadPointer(String),
    /// A query that cannot be run.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// A view did not catch up with the log in time.
    #[error(
        "view {view:?} did not catch up with the log within {timeout:?} (at offset {checkpoint}, target {target})"
    )]
    Timeout {
        /// The view.
        view: String,
        /// How long the caller waited.
        timeout: Duration,
        /// Where the view is.
        checkpoint: u64,
        /// The log end it had to reach.
        target: u64,
    },
    /// Stored view data does not decode.
    #[error("view {view:?} holds damaged data ({what}); run `kappa view rebuild {view}`")]
    Damaged {
        /// The view.
        view: String,
        /// What does not decode.
        what: String,
    },
    /// A view's fold failed (custom views report their own errors here).
    #[error("view {view:?} failed to fold: {reason}")]
    Fold {
        /// The view.
        view: String,
        /// What went wrong.
        reason: String,
    },
    /// The database (log or feed index) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An operation on a view's trees failed.
    #[error("view store error: {0}")]
    Sled(#[source] ViewStoreError),
}

/// A failure of the store that holds the views' trees (sled, which stays
/// an implementation detail): its message and its source, nothing else.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ViewStoreError(sled::Error);

impl From<sled::Error> for ViewError {
    fn from(e: sled::Error) -> Self {
        Self::Sled(ViewStoreError(e))
    }
}

impl ViewError {
    /// A fold error for a custom view.
    pub fn fold(view: &str, reason: impl Into<String>) -> Self {
        Self::Fold {
            view: view.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn damaged(view: &str, what: impl Into<String>) -> Self {
        Self::Damaged {
            view: view.to_string(),
            what: what.into(),
        }
    }
}
