//! The local API's route table: every operation's method and path,
//! defined once.
//!
//! The server ([`crate::api`]) mounts each handler on one of these routes
//! and the client ([`crate::client::Remote`]) builds its URLs from the same
//! ones, so a path cannot differ between the two. A path is a template:
//! a segment `{name}` is a parameter (axum's syntax, which the router takes
//! as is), and [`Route::fill`] puts the client's values in, percent-encoded.
//! A route's type says how many parameters it has, and a template with
//! another number does not compile.

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET: a read; parameters in the query string.
    Get,
    /// POST: a write; a JSON body.
    Post,
    /// DELETE: a removal; no body.
    Delete,
}

/// One endpoint: a method and a path template with `N` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<const N: usize> {
    /// The method.
    pub method: Method,
    /// The path template, e.g. `/v1/feeds/{feed}/{seq}`.
    pub path: &'static str,
}

/// Whether byte `i` of `path` starts a parameter segment.
const fn starts_param(path: &[u8], i: usize) -> bool {
    path[i] == b'{' && i > 0 && path[i - 1] == b'/'
}

/// How many parameter segments a path template has.
const fn param_count(path: &str) -> usize {
    let bytes = path.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < bytes.len() {
        if starts_param(bytes, i) {
            n += 1;
        }
        i += 1;
    }
    n
}

impl<const N: usize> Route<N> {
    /// A route; fails to compile (in a `const`) unless `path` has `N`
    /// parameters.
    const fn new(method: Method, path: &'static str) -> Self {
        assert!(
            param_count(path) == N,
            "a route's parameter count does not match its path"
        );
        Self { method, path }
    }

    /// The path with `args` in place of its parameters, in order, each
    /// percent-encoded as one segment.
    pub fn fill(&self, args: [&str; N]) -> String {
        let mut args = args.iter();
        self.path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    segment(args.next().copied().unwrap_or_default())
                } else {
                    seg.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Percent-encode text as one path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The table: `NAME: PARAMS = METHOD "path";`, one line per endpoint.
macro_rules! routes {
    ($($(#[$doc:meta])* $name:ident: $n:literal = $method:ident $path:literal;)*) => {
        $($(#[$doc])* pub const $name: Route<$n> = Route::new(Method::$method, $path);)*

        /// Every route (method and template): for tests that walk them,
        /// and the API's request counts by route.
        pub const ALL: &[(Method, &str)] = &[$((Method::$method, $path)),*];
    };
}

routes! {
    /// The database's state.
    STATUS: 0 = Get "/v1/status";
    /// The node's peer id, addresses and connections.
    NODE: 0 = Get "/v1/node";
    /// Append one payload or many.
    APPEND: 0 = Post "/v1/append";
    /// A page of log records.
    LOG: 0 = Get "/v1/log";
    /// Every known feed and its head.
    FEEDS: 0 = Get "/v1/feeds";
    /// A feed's entries from a seq on.
    FEED_RANGE: 1 = Get "/v1/feeds/{feed}";
    /// One entry.
    ENTRY: 2 = Get "/v1/feeds/{feed}/{seq}";
    /// The address book.
    PEERS: 0 = Get "/v1/peers";
    /// Views and their lag.
    VIEWS: 0 = Get "/v1/views";
    /// Declare a field index.
    VIEW_ADD: 0 = Post "/v1/views";
    /// Remove a field index.
    VIEW_REMOVE: 1 = Delete "/v1/views/{name}";
    /// A view's digest.
    VIEW_DIGEST: 1 = Get "/v1/views/{name}/digest";
    /// Query a field index.
    FIELD_QUERY: 1 = Get "/v1/views/{name}/query";
    SEARCH: 1 = Get "/v1/views/{name}/search";
    /// Rebuild a view from offset 0.
    VIEW_REBUILD: 1 = Post "/v1/views/{name}/rebuild";
    /// The timeline.
    TIMELINE: 0 = Get "/v1/timeline";
    /// A key's value.
    KV_GET: 0 = Get "/v1/kv/get";
    /// A key's concurrent heads.
    KV_HEADS: 0 = Get "/v1/kv/heads";
    /// Live keys.
    KV_LIST: 0 = Get "/v1/kv/list";
    /// Put a key.
    KV_PUT: 0 = Post "/v1/kv/put";
    /// Delete a key.
    KV_DEL: 0 = Post "/v1/kv/del";
    /// The identity this database's feed speaks for.
    IDENTITY: 0 = Get "/v1/identity";
    /// Delegate a device to the identity held here.
    IDENTITY_DELEGATE: 0 = Post "/v1/identity/delegate";
    /// Revoke a device of the identity held here.
    IDENTITY_REVOKE: 0 = Post "/v1/identity/revoke";
    /// A kv key's heads, authors resolved to identities.
    IDENTITY_KV_HEADS: 0 = Get "/v1/identity/kv/heads";
    /// Server-sent events: log records as they land.
    EVENTS: 0 = Get "/v1/events";
    /// Delete entries of this node's own feed.
    DELETE: 0 = Post "/v1/delete";
    /// Delete this node's ops on a kv key.
    KV_PURGE: 0 = Post "/v1/kv/purge";
    /// Give back the space of erased and dropped records.
    COMPACT: 0 = Post "/v1/compact";
    /// Write a backup of the database to a directory.
    BACKUP: 0 = Post "/v1/backup";
    /// Lift the publishing hold of a restored database.
    RELEASE_HOLD: 0 = Post "/v1/hold/release";
    /// Block a feed and drop what is held of it.
    FORGET: 1 = Post "/v1/feeds/{feed}/forget";
    /// An invite to this network with the node's addresses.
    INVITE: 0 = Get "/v1/invite";
    /// Block a feed.
    BLOCK: 1 = Post "/v1/feeds/{feed}/block";
    /// Unblock a feed.
    UNBLOCK: 1 = Post "/v1/feeds/{feed}/unblock";
    /// Sync once with a peer, both ways.
    SYNC: 0 = Post "/v1/sync";
    /// Re-check every record of the log.
    VERIFY: 0 = Get "/v1/verify";
    /// The replication policy.
    FOLLOWING: 0 = Get "/v1/follow";
    /// Change the replication policy.
    FOLLOW: 0 = Post "/v1/follow";
    /// Connect to a peer by address.
    PEER_ADD: 0 = Post "/v1/peers";
    /// A one-time login link for the dashboard.
    UI_LOGIN: 0 = Post "/v1/ui/login";
    /// What the dashboard's panels show.
    UI_STATE: 0 = Get "/v1/ui/state";
    /// The same, once a second, as server-sent events.
    UI_EVENTS: 0 = Get "/v1/ui/events";
}

/// Where the route table's templates give no route: the dashboard's page
/// and assets, its login, and the metrics.
pub const PAGES: &[&str] = &["/", "/login", "/metrics", "/ui/app.js", "/ui/style.css"];

/// The template `path` was served by, for counting requests by route
/// (`other` when none matches).
pub fn label_of(path: &str) -> &'static str {
    if let Some(p) = PAGES.iter().find(|p| **p == path) {
        return p;
    }
    let segs: Vec<&str> = path.split('/').collect();
    for (_, template) in ALL {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
        {
            return template;
        }
    }
    "other"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_encodes_each_parameter_as_one_segment() {
        assert_eq!(ENTRY.fill(["self", "7"]), "/v1/feeds/self/7");
        assert_eq!(
            VIEW_DIGEST.fill(["a/b c%é"]),
            "/v1/views/a%2Fb%20c%25%C3%A9/digest"
        );
        assert_eq!(STATUS.fill([]), "/v1/status");
    }

    #[test]
    fn every_template_is_under_v1_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for (method, path) in ALL {
            assert!(path.starts_with("/v1/"), "{path}");
            assert!(seen.insert((*method, *path)), "{method:?} {path} twice");
        }
        assert_eq!(param_count("/v1/feeds/{feed}/{seq}"), 2);
    }

    #[test]
    fn a_path_is_counted_under_its_template() {
        assert_eq!(label_of("/v1/feeds/abc/7"), "/v1/feeds/{feed}/{seq}");
        assert_eq!(label_of("/v1/feeds/abc"), "/v1/feeds/{feed}");
        assert_eq!(label_of("/v1/status"), "/v1/status");
        assert_eq!(label_of("/metrics"), "/metrics");
        assert_eq!(label_of("/v1/feeds//7"), "other");
        assert_eq!(label_of("/etc/passwd"), "other");
    }
}
