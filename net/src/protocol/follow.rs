//! Which feeds a node replicates ([`Follow`]): every feed of the network
//! (today's default) but some, or only some. The block list is separate
//! and stronger: a blocked feed is neither stored nor served; a feed that
//! is not followed is neither requested nor stored, and is served only if
//! it happens to be held.

use std::collections::BTreeSet;

use kappadb_core::FeedId;

/// A replication policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Every feed of the network, except these.
    All {
        /// Feeds not followed.
        except: BTreeSet<FeedId>,
    },
    /// Only these feeds (the node's own feed is always one of them).
    Only {
        /// Feeds followed.
        feeds: BTreeSet<FeedId>,
    },
}

impl Default for Follow {
    fn default() -> Self {
        Follow::All {
            except: BTreeSet::new(),
        }
    }
}

impl Follow {
    /// Whether `feed` is followed.
    pub fn wants(&self, feed: &FeedId) -> bool {
        match self {
            Follow::All { except } => !except.contains(feed),
            Follow::Only { feeds } => feeds.contains(feed),
        }
    }

    /// Follow `feed`; false if it was followed already.
    pub fn follow(&mut self, feed: FeedId) -> bool {
        match self {
            Follow::All { except } => except.remove(&feed),
            Follow::Only { feeds } => feeds.insert(feed),
        }
    }

    /// Stop following `feed`; false if it was not followed.
    pub fn unfollow(&mut self, feed: FeedId) -> bool {
        match self {
            Follow::All { except } => except.insert(feed),
            Follow::Only { feeds } => feeds.remove(&feed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_and_unfollow_in_both_modes() {
        let (a, b) = (FeedId([1; 32]), FeedId([2; 32]));
        let mut all = Follow::default();
        assert!(all.wants(&a));
        assert!(all.unfollow(a));
        assert!(!all.unfollow(a));
        assert!(!all.wants(&a) && all.wants(&b));
        assert!(all.follow(a));
        let mut only = Follow::Only {
            feeds: [a].into_iter().collect(),
        };
        assert!(only.wants(&a) && !only.wants(&b));
        assert!(only.follow(b) && only.wants(&b));
        assert!(only.unfollow(a) && !only.wants(&a));
    }
}
