use crate::filter::{MAX_FILTER_LEVELS, MAX_TOPIC_LEN};

/// Why a topic name or topic filter was rejected.
///
/// Mapping to an MQTT reason code (e.g. 0x90 Topic Name invalid, 0x8F Topic
/// Filter invalid) is left to the protocol edge, which knows which of the two
/// it was checking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic or filter is the empty string.
    #[error("topic must not be empty")]
    Empty,
    /// The topic or filter does not fit an MQTT UTF-8 string.
    #[error("topic is longer than {} bytes", MAX_TOPIC_LEN)]
    TooLong,
    /// A topic name (as published to) contains `+` or `#`.
    #[error("topic name must not contain the wildcards '+' or '#'")]
    WildcardInName,
    /// A filter uses `+` or `#` as part of a level, or `#` before the last level.
    #[error("'+' and '#' must occupy a whole level, and '#' must be the last level")]
    InvalidWildcard,
    /// The topic or filter contains U+0000, which MQTT forbids in strings.
    #[error("topic must not contain the null character U+0000")]
    NullCharacter,
    /// A `$share/` filter without a group, with `+`, `#` or `/` in its group,
    /// or without a filter after the group.
    #[error(
        "shared subscription must be '$share/{{group}}/{{filter}}' with a non-empty group \
         free of '/', '+' and '#', and a non-empty filter"
    )]
    InvalidSharedSubscription,
    /// A filter has more levels than the trie accepts.
    #[error("topic filter has more than {} levels", MAX_FILTER_LEVELS)]
    TooManyLevels,
}
