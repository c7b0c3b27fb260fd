//! MQTT topic names, topic filters and the subscription trie.
//!
//! - [`validate_topic_name`] checks the topic of a PUBLISH.
//! - [`TopicFilter`] is a validated subscription filter, split into its
//!   `$share/{group}/` prefix (if any) and the filter proper.
//! - [`SubscriptionTrie`] maps filters to subscribers and finds every
//!   subscription a topic matches, at a cost that depends on the topic and the
//!   matching filters, not on how many filters are stored.
//! - [`SmallMap`] is the map the trie keeps per node, and the broker per session:
//!   a `Vec` while it holds few entries, a hash map beyond.
//!
//! Matching follows MQTT 5.0 section 4.7 (identical to 3.1.1 section 4.7):
//! levels are separated by `/` and may be empty, `+` matches exactly one level,
//! `#` matches its parent level and any number of levels below it, and topics
//! starting with `$` are not matched by filters whose first level is `+` or `#`.
//!
//! The crate knows nothing about sessions or nodes: the trie is generic over
//! the subscriber key and the value stored per subscription.
//!
//! ```
//! use fleetmq_topic::{Match, SubscriptionTrie, TopicFilter};
//!
//! let mut trie = SubscriptionTrie::new();
//! trie.insert(&TopicFilter::parse("sport/+/score").unwrap(), "alice", 1u8);
//! trie.insert(&TopicFilter::parse("$share/workers/sport/#").unwrap(), "bob", 0u8);
//!
//! let mut direct = Vec::new();
//! trie.for_each_match("sport/tennis/score", |m| match m {
//!     Match::Direct { key, value } => direct.push((*key, *value)),
//!     Match::Shared { group, members, .. } => assert_eq!((group, members), ("workers", &[("bob", 0)][..])),
//! });
//! assert_eq!(direct, [("alice", 1)]);
//! ```

mod error;
mod filter;
pub mod relation;
pub mod small_map;
mod trie;

pub use error::TopicError;
pub use filter::{validate_topic_name, TopicFilter, MAX_FILTER_LEVELS, MAX_TOPIC_LEN};
pub use small_map::SmallMap;
pub use trie::{Match, SubscriptionTrie};
