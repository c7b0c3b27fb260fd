use std::fmt;
use std::str::FromStr;

use crate::TopicError;

/// The longest topic name or filter, in bytes: the most an MQTT UTF-8 string can hold.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The most levels a topic filter may have (the `$share/{group}/` prefix not counted).
///
/// The trie recurses once per filter level when matching and removing, so this
/// bounds stack depth: without it a 64 KiB filter of slashes would be 65,536
/// nested nodes. 128 is EMQX's default `max_topic_levels`; topic names are not
/// limited, because matching never goes deeper than the deepest filter.
pub const MAX_FILTER_LEVELS: usize = 128;

const SHARE_PREFIX: &str = "$share/";

/// Validates a topic name a client publishes to: non-empty, at most
/// [`MAX_TOPIC_LEN`] bytes, no `+` or `#`, no U+0000.
///
/// Empty levels (`a//b`, `/a`, `a/`) and a leading `$` are valid.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    // Byte search is sound here: '+', '#' and NUL are ASCII, and UTF-8 never
    // uses ASCII byte values inside a multi-byte character.
    for byte in name.bytes() {
        match byte {
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            b'\0' => return Err(TopicError::NullCharacter),
            _ => {}
        }
    }
    Ok(())
}

/// A validated subscription filter, with a `$share/{group}/{filter}` prefix
/// split into its group and filter.
///
/// A filter starting with `$share/` is always taken as a shared subscription,
/// whatever the protocol version, as other brokers do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    /// Exactly what the client sent, so it can be echoed back and persisted as is.
    text: Box<str>,
    /// Byte offset of the filter proper in `text`: 0 unless shared.
    filter_start: usize,
    has_wildcards: bool,
}

impl TopicFilter {
    /// Parses and validates a filter.
    ///
    /// `+` must occupy a whole level, and `#` must be the last level and occupy
    /// it whole. `$share/` needs a non-empty group without `+`, `#` or `/`,
    /// followed by `/` and a valid non-empty filter. The filter proper may have
    /// at most [`MAX_FILTER_LEVELS`] levels.
    pub fn parse(filter: &str) -> Result<TopicFilter, TopicError> {
        if filter.is_empty() {
            return Err(TopicError::Empty);
        }
        if filter.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        if filter.contains('\0') {
            return Err(TopicError::NullCharacter);
        }
        let filter_start = match filter.strip_prefix(SHARE_PREFIX) {
            None => 0,
            Some(rest) => {
                // The group ends at the first '/', so it cannot contain one.
                let (group, inner) = rest
                    .split_once('/')
                    .ok_or(TopicError::InvalidSharedSubscription)?;
                if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
                    return Err(TopicError::InvalidSharedSubscription);
                }
                SHARE_PREFIX.len() + group.len() + 1
            }
        };
        let has_wildcards = check_levels(&filter[filter_start..])?;
        Ok(TopicFilter {
            text: filter.into(),
            filter_start,
            has_wildcards,
        })
    }

    /// The share group of a `$share/{group}/{filter}` subscription, or `None`.
    pub fn share_group(&self) -> Option<&str> {
        if self.filter_start == 0 {
            return None;
        }
        self.text.get(SHARE_PREFIX.len()..self.filter_start - 1)
    }

    /// Whether this is a `$share/{group}/{filter}` subscription.
    pub fn is_shared(&self) -> bool {
        self.filter_start != 0
    }

    /// The filter without any `$share/{group}/` prefix.
    pub fn filter(&self) -> &str {
        &self.text[self.filter_start..]
    }

    /// The full text as the client sent it, with the `$share/{group}/` prefix if any.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the filter (without the share prefix) has a `+` or `#` level.
    pub fn has_wildcards(&self) -> bool {
        self.has_wildcards
    }

    /// Whether this filter, ignoring any share group, matches `topic`.
    ///
    /// Same rules as [`SubscriptionTrie::for_each_match`](crate::SubscriptionTrie::for_each_match),
    /// for one filter: `+` matches exactly one level (possibly empty), `#`
    /// matches its parent level and everything below, and a topic starting
    /// with `$` is not matched when the first level is `+` or `#`.
    pub fn matches(&self, topic: &str) -> bool {
        let filter = self.filter();
        // A validated filter whose first level is a wildcard starts with it.
        if topic.starts_with('$') && filter.starts_with(['+', '#']) {
            return false;
        }
        let mut filter_levels = filter.split('/');
        let mut topic_levels = topic.split('/');
        loop {
            match (filter_levels.next(), topic_levels.next()) {
                // '#' also matches when the topic has no level left: "a/#" matches "a".
                (Some("#"), _) => return true,
                (None, None) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(t)) if f == t => {}
                _ => return false,
            }
        }
    }
}

/// Checks wildcard placement and level count; returns whether there is a wildcard.
fn check_levels(filter: &str) -> Result<bool, TopicError> {
    let mut has_wildcards = false;
    let mut levels = filter.split('/').enumerate().peekable();
    while let Some((index, level)) = levels.next() {
        if index >= MAX_FILTER_LEVELS {
            return Err(TopicError::TooManyLevels);
        }
        match level {
            "+" => has_wildcards = true,
            "#" if levels.peek().is_none() => has_wildcards = true,
            _ if level.contains(['+', '#']) => return Err(TopicError::InvalidWildcard),
            _ => {}
        }
    }
    Ok(has_wildcards)
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for TopicFilter {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicFilter::parse(s)
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        TopicFilter::parse(value)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        let long = "a".repeat(MAX_TOPIC_LEN);
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a", Ok(())),
            ("sport/tennis/player1", Ok(())),
            ("/", Ok(())),
            ("//", Ok(())),
            ("/a", Ok(())),
            ("a/", Ok(())),
            ("a//b", Ok(())),
            (" ", Ok(())),
            ("$SYS/broker/uptime", Ok(())),
            ("$share/g/a", Ok(())),
            ("ünïcødé/日本", Ok(())),
            (&long, Ok(())),
            ("", Err(TopicError::Empty)),
            (&too_long, Err(TopicError::TooLong)),
            ("+", Err(TopicError::WildcardInName)),
            ("#", Err(TopicError::WildcardInName)),
            ("a/+/b", Err(TopicError::WildcardInName)),
            ("a/#", Err(TopicError::WildcardInName)),
            ("a+b", Err(TopicError::WildcardInName)),
            ("a#", Err(TopicError::WildcardInName)),
            ("a\0b", Err(TopicError::NullCharacter)),
            ("\0", Err(TopicError::NullCharacter)),
        ];
        for (name, expected) in cases {
            assert_eq!(&validate_topic_name(name), expected, "name {name:?}");
        }
    }

    #[test]
    fn valid_filters() {
        // (text, share group, filter, has wildcards)
        let cases: &[(&str, Option<&str>, &str, bool)] = &[
            ("a", None, "a", false),
            ("a/b/c", None, "a/b/c", false),
            ("/", None, "/", false),
            ("a//b", None, "a//b", false),
            ("+", None, "+", true),
            ("#", None, "#", true),
            ("+/+", None, "+/+", true),
            ("/+", None, "/+", true),
            ("+/", None, "+/", true),
            ("sport/#", None, "sport/#", true),
            ("sport/+/player1", None, "sport/+/player1", true),
            ("+/tennis/#", None, "+/tennis/#", true),
            ("/#", None, "/#", true),
            ("$SYS/#", None, "$SYS/#", true),
            ("$share", None, "$share", false),
            ("$sharex/g/a", None, "$sharex/g/a", false),
            ("$share/g/a", Some("g"), "a", false),
            (
                "$share/group-1/sport/+/x",
                Some("group-1"),
                "sport/+/x",
                true,
            ),
            ("$share/g/#", Some("g"), "#", true),
            ("$share/g//", Some("g"), "/", false),
            ("$share/g/$SYS/x", Some("g"), "$SYS/x", false),
            ("$share/$share/a", Some("$share"), "a", false),
        ];
        for &(text, group, filter, wildcards) in cases {
            let parsed = TopicFilter::parse(text)
                .unwrap_or_else(|e| panic!("{text:?} should be valid, got {e}"));
            assert_eq!(parsed.as_str(), text);
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.share_group(), group, "group of {text:?}");
            assert_eq!(parsed.is_shared(), group.is_some());
            assert_eq!(parsed.filter(), filter, "filter of {text:?}");
            assert_eq!(parsed.has_wildcards(), wildcards, "wildcards of {text:?}");
        }
    }

    #[test]
    fn invalid_filters() {
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let max_levels = vec!["a"; MAX_FILTER_LEVELS].join("/");
        let too_many_levels = vec!["a"; MAX_FILTER_LEVELS + 1].join("/");
        let shared_too_many = format!("$share/g/{too_many_levels}");
        assert!(TopicFilter::parse(&max_levels).is_ok());
        assert!(TopicFilter::parse(&format!("$share/g/{max_levels}")).is_ok());
        let cases: &[(&str, TopicError)] = &[
            ("", TopicError::Empty),
            (&too_long, TopicError::TooLong),
            ("a\0", TopicError::NullCharacter),
            ("$share/g/a\0", TopicError::NullCharacter),
            ("a+", TopicError::InvalidWildcard),
            ("+a", TopicError::InvalidWildcard),
            ("a/b+/c", TopicError::InvalidWildcard),
            ("++", TopicError::InvalidWildcard),
            ("a#", TopicError::InvalidWildcard),
            ("sport/tennis#", TopicError::InvalidWildcard),
            ("#/", TopicError::InvalidWildcard),
            ("#/a", TopicError::InvalidWildcard),
            ("sport/#/ranking", TopicError::InvalidWildcard),
            ("##", TopicError::InvalidWildcard),
            ("+#", TopicError::InvalidWildcard),
            ("$share/", TopicError::InvalidSharedSubscription),
            ("$share/g", TopicError::InvalidSharedSubscription),
            ("$share/g/", TopicError::InvalidSharedSubscription),
            ("$share//a", TopicError::InvalidSharedSubscription),
            ("$share/+/a", TopicError::InvalidSharedSubscription),
            ("$share/#/a", TopicError::InvalidSharedSubscription),
            ("$share/g+/a", TopicError::InvalidSharedSubscription),
            ("$share/g#/a", TopicError::InvalidSharedSubscription),
            ("$share/g/a+", TopicError::InvalidWildcard),
            ("$share/g/#/a", TopicError::InvalidWildcard),
            (&too_many_levels, TopicError::TooManyLevels),
            (&shared_too_many, TopicError::TooManyLevels),
        ];
        for (text, expected) in cases {
            assert_eq!(
                TopicFilter::parse(text).as_ref(),
                Err(expected),
                "filter {text:?}"
            );
        }
    }

    #[test]
    fn from_str_and_try_from_agree_with_parse() {
        assert_eq!("a/+".parse::<TopicFilter>(), TopicFilter::parse("a/+"));
        assert_eq!(
            TopicFilter::try_from("a/#/b"),
            Err(TopicError::InvalidWildcard)
        );
    }

    #[test]
    fn error_messages_name_the_rule() {
        assert_eq!(
            TopicError::TooLong.to_string(),
            "topic is longer than 65535 bytes"
        );
        assert_eq!(
            TopicError::TooManyLevels.to_string(),
            "topic filter has more than 128 levels"
        );
        assert!(TopicError::InvalidSharedSubscription
            .to_string()
            .contains("'$share/{group}/{filter}'"));
    }

    /// (filter, topic, matches): the examples of MQTT 5.0 section 4.7 and the edges around them.
    pub(crate) const MATCH_CASES: &[(&str, &str, bool)] = &[
        // Literal levels.
        ("a", "a", true),
        ("a", "b", false),
        ("a/b", "a/b", true),
        ("a/b", "a", false),
        ("a", "a/b", false),
        ("A", "a", false),
        ("a/b", "a/b/", false),
        // Empty levels are levels.
        ("/", "/", true),
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("/a", "/a", true),
        ("/a", "a", false),
        ("a/", "a/", true),
        ("a/", "a", false),
        // '+' is exactly one level, which may be empty.
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "a", true),
        ("+", "", true),
        ("+", "a/b", false),
        ("+", "/a", false),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/+", "a//", false),
        ("a/+/b", "a//b", true),
        ("+/+/+", "//", true),
        // '#' is the parent level and any number of children.
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("sport/#", "sport/", true),
        ("sport/#", "sports", false),
        ("#", "a", true),
        ("#", "a/b/c", true),
        ("#", "/", true),
        ("#", "", true),
        ("/#", "/a", true),
        ("/#", "a", false),
        ("+/#", "a", true),
        ("+/#", "a/b/c", true),
        ("sport/+/#", "sport", false),
        ("sport/+/#", "sport/x", true),
        ("sport/tennis/#", "sport/tennis/player1/ranking", true),
        // '$' topics and leading wildcards.
        ("#", "$SYS", false),
        ("#", "$SYS/broker", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+", "$", false),
        ("+/#", "$SYS/a", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/+", "$SYS/a", true),
        ("a/#", "a/$b", true),
        ("a/+", "a/$b", true),
        ("+", "a$", true),
    ];

    #[test]
    fn matching_rules() {
        for &(filter, topic, expected) in MATCH_CASES {
            let parsed = TopicFilter::parse(filter).expect("test filters are valid");
            assert_eq!(parsed.matches(topic), expected, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn matching_ignores_the_share_group() {
        let shared = TopicFilter::parse("$share/g/sport/+").expect("valid");
        assert!(shared.matches("sport/tennis"));
        assert!(!shared.matches("$share/g/sport/tennis"));
        let shared_all = TopicFilter::parse("$share/g/#").expect("valid");
        assert!(shared_all.matches("a/b"));
        assert!(!shared_all.matches("$SYS/a"));
    }
}
