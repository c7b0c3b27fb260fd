//! The trie checked against a brute-force model: a map of every live
//! subscription, matched one filter at a time with `TopicFilter::matches`.

use std::collections::HashMap;

use fleetmq_topic::{validate_topic_name, Match, SubscriptionTrie, TopicError, TopicFilter};
use proptest::prelude::*;

/// A few levels, so random filters and topics collide often; `$sys` exercises
/// the `$` rule, "" empty levels, "a$" a `$` that is not leading.
const LEVELS: &[&str] = &["a", "b", "", "$sys", "a$"];

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(LEVELS)
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..=5).prop_map(|levels| levels.join("/"))
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+")];
    let body = prop::collection::vec(filter_level, 0..=4);
    let group = prop::option::weighted(0.3, prop::sample::select(&["g1", "g2"][..]));
    (body, any::<bool>(), group).prop_filter_map(
        "a filter must not be empty",
        |(mut levels, hash, group)| {
            if hash {
                levels.push("#");
            }
            let body = levels.join("/");
            // [] and [""] both give "", which no filter may be.
            if body.is_empty() {
                return None;
            }
            let text = match group {
                Some(group) => format!("$share/{group}/{body}"),
                None => body,
            };
            Some(TopicFilter::parse(&text).expect("generated filters are valid"))
        },
    )
}

#[derive(Debug, Clone)]
enum Op {
    Insert(TopicFilter, u8),
    Remove(TopicFilter, u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (filter(), 0..4u8).prop_map(|(f, k)| Op::Insert(f, k)),
        1 => (filter(), 0..4u8).prop_map(|(f, k)| Op::Remove(f, k)),
    ];
    prop::collection::vec(op, 0..60)
}

/// A live subscription in the model: its value, and when it first joined so
/// shared group order can be predicted (a replacement keeps its place).
struct Entry {
    filter: TopicFilter,
    value: usize,
    joined: usize,
}

/// Keyed by the full filter text and the key, which is exactly what makes a
/// subscription distinct in the trie.
type Model = HashMap<(String, u8), Entry>;

/// What one topic matches, in a comparable form: direct subscriptions as
/// sorted (key, value), shared groups as sorted (group, filter, members in order).
type Matched = (Vec<(u8, usize)>, Vec<(String, String, Vec<(u8, usize)>)>);

fn trie_matches(trie: &SubscriptionTrie<u8, usize>, topic: &str) -> Matched {
    let (mut direct, mut shared) = (Vec::new(), Vec::new());
    trie.for_each_match(topic, |m| match m {
        Match::Direct { key, value } => direct.push((*key, *value)),
        Match::Shared {
            group,
            filter,
            members,
        } => shared.push((group.to_owned(), filter.to_owned(), members.to_vec())),
    });
    direct.sort_unstable();
    shared.sort();
    (direct, shared)
}

fn model_matches(model: &Model, topic: &str) -> Matched {
    let mut direct = Vec::new();
    // (group, filter) -> [(joined, key, value)]
    type Groups = HashMap<(String, String), Vec<(usize, u8, usize)>>;
    let mut groups = Groups::new();
    for ((_, key), entry) in model {
        if !entry.filter.matches(topic) {
            continue;
        }
        match entry.filter.share_group() {
            None => direct.push((*key, entry.value)),
            Some(group) => groups
                .entry((group.to_owned(), entry.filter.filter().to_owned()))
                .or_default()
                .push((entry.joined, *key, entry.value)),
        }
    }
    direct.sort_unstable();
    let mut shared: Vec<_> = groups
        .into_iter()
        .map(|((group, filter), mut members)| {
            members.sort_unstable();
            let members = members.into_iter().map(|(_, k, v)| (k, v)).collect();
            (group, filter, members)
        })
        .collect();
    shared.sort();
    (direct, shared)
}

proptest! {
    #[test]
    fn trie_agrees_with_brute_force(ops in ops(), topics in prop::collection::vec(topic(), 1..20)) {
        let mut trie = SubscriptionTrie::new();
        let mut model = Model::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Insert(filter, key) => {
                    let previous = trie.insert(&filter, key, step);
                    let slot = (filter.as_str().to_owned(), key);
                    let expected = match model.get_mut(&slot) {
                        Some(entry) => Some(std::mem::replace(&mut entry.value, step)),
                        None => {
                            model.insert(slot, Entry { filter, value: step, joined: step });
                            None
                        }
                    };
                    prop_assert_eq!(previous, expected);
                }
                Op::Remove(filter, key) => {
                    let removed = trie.remove(&filter, &key);
                    let expected = model.remove(&(filter.as_str().to_owned(), key)).map(|e| e.value);
                    prop_assert_eq!(removed, expected);
                }
            }
            prop_assert_eq!(trie.len(), model.len());
        }

        for topic in &topics {
            prop_assert_eq!(trie_matches(&trie, topic), model_matches(&model, topic), "topic {:?}", topic);
        }
        for ((_, key), entry) in &model {
            prop_assert_eq!(trie.get(&entry.filter, key), Some(&entry.value));
        }

        for ((_, key), entry) in &model {
            prop_assert_eq!(trie.remove(&entry.filter, key), Some(entry.value));
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn parse_never_panics_and_keeps_the_text(
        prefix in prop::sample::select(&["", "$share/", "$share/g/", "$"][..]),
        rest in "[ab/+#$\u{0}]{0,12}",
    ) {
        let text = format!("{prefix}{rest}");
        match TopicFilter::parse(&text) {
            Ok(filter) => {
                prop_assert_eq!(filter.as_str(), text.as_str());
                let rebuilt = match filter.share_group() {
                    Some(group) => format!("$share/{group}/{}", filter.filter()),
                    None => filter.filter().to_owned(),
                };
                prop_assert_eq!(rebuilt, text.clone());
                prop_assert_eq!(filter.has_wildcards(), filter.filter().contains(['+', '#']));
                // A filter without wildcards is a topic name matching only itself.
                if !filter.has_wildcards() {
                    prop_assert_eq!(validate_topic_name(filter.filter()), Ok(()));
                    prop_assert!(filter.matches(filter.filter()));
                }
            }
            Err(TopicError::TooLong | TopicError::TooManyLevels) => {
                prop_assert!(false, "short input {:?} rejected for its size", text);
            }
            Err(_) => {}
        }
    }

    #[test]
    fn names_without_wildcards_or_nul_are_valid(name in "[ab/$ ]{1,12}") {
        prop_assert_eq!(validate_topic_name(&name), Ok(()));
    }
}
