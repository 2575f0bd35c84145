//! [`SearchSpec`]: what a search view indexes, as declared at run time and
//! stored in the sled tree `search/declared` (name -> JSON).

use serde::{Deserialize, Serialize};
use tantivy::tokenizer::Language;

use crate::error::SearchError;

/// Domain prefix of the version hash: bump it whenever the view changes
/// what it stores (documents, sled keys, the tantivy schema).
const VERSION_DOMAIN: &[u8] = b"kappadb/search-view/v1\0";

/// Most text fields a view may index.
pub const MAX_FIELDS: usize = 16;

/// Languages a view can stem for (`--language`), and `none`.
pub const LANGUAGES: &[&str] = &[
    "none",
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
];

/// A search view's declaration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchSpec {
    /// JSON pointers of the text fields, in declaration order (`/title`).
    pub fields: Vec<String>,
    /// Only entries whose payload `"type"` is this.
    #[serde(default)]
    pub kind: Option<String>,
    /// Stemming language (see [`LANGUAGES`]); `None` is English.
    #[serde(default)]
    pub language: Option<String>,
}

impl SearchSpec {
    /// A declaration on `fields`, English stemming, every type.
    pub fn new(fields: &[&str]) -> Self {
        Self {
            fields: fields.iter().map(|f| f.to_string()).collect(),
            kind: None,
            language: None,
        }
    }

    /// Check the declaration: 1 to [`MAX_FIELDS`] distinct pointers of
    /// `[A-Za-z0-9_-]` segments, a known language, a non-empty type.
    pub fn check(&self) -> Result<(), SearchError> {
        let bad = |m: String| Err(SearchError::BadDeclaration(m));
        if self.fields.is_empty() {
            return bad("give at least one text field (--text /title)".into());
        }
        if self.fields.len() > MAX_FIELDS {
            return bad(format!("at most {MAX_FIELDS} text fields"));
        }
        let mut names = Vec::new();
        for f in &self.fields {
            let name = field_name(f)?;
            if names.contains(&name) {
                return bad(format!("field {f:?} is given twice"));
            }
            names.push(name);
        }
        if let Some(k) = &self.kind
            && (k.is_empty() || k.len() > 256)
        {
            return bad("the type must be 1 to 256 bytes".into());
        }
        self.language()?;
        Ok(())
    }

    /// The stemming language, `None` for no stemming.
    pub(crate) fn language(&self) -> Result<Option<Language>, SearchError> {
        let lang = self.language.as_deref().unwrap_or("english");
        Ok(Some(match lang {
            "none" => return Ok(None),
            "arabic" => Language::Arabic,
            "danish" => Language::Danish,
            "dutch" => Language::Dutch,
            "english" => Language::English,
            "finnish" => Language::Finnish,
            "french" => Language::French,
            "german" => Language::German,
            "greek" => Language::Greek,
            "hungarian" => Language::Hungarian,
            "italian" => Language::Italian,
            "norwegian" => Language::Norwegian,
            "portuguese" => Language::Portuguese,
            "romanian" => Language::Romanian,
            "russian" => Language::Russian,
            "spanish" => Language::Spanish,
            "swedish" => Language::Swedish,
            "tamil" => Language::Tamil,
            "turkish" => Language::Turkish,
            other => {
                return Err(SearchError::BadDeclaration(format!(
                    "unknown language {other:?}; one of {}",
                    LANGUAGES.join(", ")
                )));
            }
        }))
    }

    /// The fold's version: a hash of the declaration, so that changing it
    /// rebuilds the view.
    pub(crate) fn version(&self) -> u32 {
        let mut h = blake3::Hasher::new();
        h.update(VERSION_DOMAIN);
        for f in &self.fields {
            h.update(&(f.len() as u64).to_le_bytes());
            h.update(f.as_bytes());
        }
        match &self.kind {
            Some(k) => {
                h.update(&[1]);
                h.update(&(k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
        h.update(self.language.as_deref().unwrap_or("english").as_bytes());
        let mut v = [0u8; 4];
        v.copy_from_slice(&h.finalize().as_bytes()[..4]);
        u32::from_le_bytes(v)
    }

    /// `kappa view list`'s description.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("search on {}", self.fields.join(", "));
        if let Some(k) = &self.kind {
            s.push_str(&format!(" (type {k})"));
        }
        if let Some(l) = &self.language
            && l != "english"
        {
            s.push_str(&format!(" [{l}]"));
        }
        s
    }
}

/// The engine's name for the field at `pointer`: `/title` -> `title`,
/// `/meta/summary` -> `meta_summary` (what a query names with
/// `title:word`).
pub(crate) fn field_name(pointer: &str) -> Result<String, SearchError> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(SearchError::BadDeclaration(format!(
            "bad json pointer {pointer:?}: it must start with '/'"
        )));
    };
    let ok = !rest.is_empty()
        && rest.len() <= 128
        && rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
        && !rest.starts_with('-');
    if !ok {
        return Err(SearchError::BadDeclaration(format!(
            "bad text field {pointer:?}: use '/'-separated segments of letters, digits, '_' and '-'"
        )));
    }
    let name = rest.replace('/', "_");
    if RESERVED.contains(&name.as_str()) {
        return Err(SearchError::BadDeclaration(format!(
            "text field {pointer:?} takes a reserved name ({})",
            RESERVED.join(", ")
        )));
    }
    Ok(name)
}

/// Names of the engine's own fields.
pub(crate) const RESERVED: &[&str] = &["key", "feed", "seq", "offset", "timestamp", "type"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_declarations() {
        assert!(SearchSpec::new(&["/title", "/body"]).check().is_ok());
        assert!(SearchSpec::new(&[]).check().is_err());
        assert!(SearchSpec::new(&["title"]).check().is_err());
        assert!(SearchSpec::new(&["/a b"]).check().is_err());
        assert!(SearchSpec::new(&["/seq"]).check().is_err());
        assert!(SearchSpec::new(&["/t", "/t"]).check().is_err());
        assert!(SearchSpec::new(&["/a/b", "/a_b"]).check().is_err());
        let mut s = SearchSpec::new(&["/t"]);
        s.language = Some("klingon".into());
        assert!(s.check().is_err());
        s.language = Some("french".into());
        assert!(s.check().is_ok());
        assert_eq!(field_name("/meta/summary").unwrap(), "meta_summary");
    }

    #[test]
    fn version_follows_the_declaration() {
        let a = SearchSpec::new(&["/title"]);
        let mut b = a.clone();
        assert_eq!(a.version(), b.version());
        b.kind = Some("note".into());
        assert_ne!(a.version(), b.version());
        let c = SearchSpec::new(&["/title", "/body"]);
        assert_ne!(a.version(), c.version());
    }
}
