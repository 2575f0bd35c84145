//! [`SearchError`]: what can go wrong declaring, folding and querying a
//! search view.

use kappadb_views::ViewError;

/// A search view error.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The declaration is not usable (no field, a bad pointer, an unknown
    /// language).
    #[error("bad search view declaration: {0}")]
    BadDeclaration(String),
    /// The query does not parse, or asks for something the view cannot do.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// No search view of that name is declared.
    #[error("no search view named {0:?}; `kappa view list` shows the views")]
    UnknownSearchView(String),
    /// The view layer failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The search engine failed (an I/O error, a damaged index).
    #[error("search index of view {view:?}: {reason}")]
    Index {
        /// The view.
        view: String,
        /// What went wrong.
        reason: String,
    },
}

impl SearchError {
    pub(crate) fn index(view: &str, reason: impl std::fmt::Display) -> Self {
        Self::Index {
            view: view.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl From<SearchError> for ViewError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::View(v) => v,
            SearchError::Index { view, reason } => ViewError::fold(&view, reason),
            other => ViewError::fold("search", other.to_string()),
        }
    }
}
