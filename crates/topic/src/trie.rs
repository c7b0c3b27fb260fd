use std::hash::Hash;
use std::str::Split;

use crate::{SmallMap, TopicFilter};

/// One subscription entry a topic matched, as passed to
/// [`SubscriptionTrie::for_each_match`].
#[derive(Debug)]
pub enum Match<'a, K, V> {
    /// A plain (non-shared) subscription.
    Direct {
        /// The subscriber.
        key: &'a K,
        /// What was stored with the subscription.
        value: &'a V,
    },
    /// A shared subscription group with at least one member; the caller
    /// delivers to one of `members`.
    Shared {
        /// The share group name.
        group: &'a str,
        /// The filter the group subscribed to, without the `$share/{group}/` prefix.
        filter: &'a str,
        /// The group's members in the order they joined (a re-subscribe keeps its place).
        members: &'a [(K, V)],
    },
}

// Hand-written because a derive would demand `K: Copy, V: Copy` for what is only references.
impl<K, V> Clone for Match<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Match<'_, K, V> {}

/// The subscriptions whose filter ends at one trie node.
#[derive(Debug, Clone)]
struct Subscribers<K, V> {
    /// Most filters have one subscriber (a device's own topic): see [`SmallMap`].
    direct: SmallMap<K, V>,
    /// Few groups share one filter in practice, so a Vec beats a map and keeps
    /// the visiting order stable.
    shared: Vec<SharedGroup<K, V>>,
}

#[derive(Debug, Clone)]
struct SharedGroup<K, V> {
    name: Box<str>,
    /// Kept here so a match can name the filter without rebuilding it from the path.
    filter: Box<str>,
    /// A Vec because callers pick members by position (round robin) and the
    /// order must survive removals; membership changes are O(members), which
    /// is rare next to matching.
    members: Vec<(K, V)>,
}

impl<K: Eq + Hash, V> Subscribers<K, V> {
    fn new() -> Self {
        Subscribers {
            direct: SmallMap::new(),
            shared: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    fn visit<'a, F: FnMut(Match<'a, K, V>)>(&'a self, visit: &mut F) {
        for (key, value) in &self.direct {
            visit(Match::Direct { key, value });
        }
        for group in &self.shared {
            visit(Match::Shared {
                group: &group.name,
                filter: &group.filter,
                members: &group.members,
            });
        }
    }

    fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let Some(name) = filter.share_group() else {
            return self.direct.insert(key, value);
        };
        let group = match self.shared.iter().position(|g| &*g.name == name) {
            Some(index) => &mut self.shared[index],
            None => {
                self.shared.push(SharedGroup {
                    name: name.into(),
                    filter: filter.filter().into(),
                    members: Vec::new(),
                });
                let last = self.shared.len() - 1;
                &mut self.shared[last]
            }
        };
        match group.members.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                group.members.push((key, value));
                None
            }
        }
    }

    fn remove(&mut self, group: Option<&str>, key: &K) -> Option<V> {
        let Some(name) = group else {
            return self.direct.remove(key);
        };
        let group_index = self.shared.iter().position(|g| &*g.name == name)?;
        let members = &mut self.shared[group_index].members;
        let member_index = members.iter().position(|(k, _)| k == key)?;
        let (_, value) = members.remove(member_index);
        if members.is_empty() {
            // An empty group must go: a match promises at least one member.
            self.shared.remove(group_index);
        }
        Some(value)
    }

    fn get(&self, group: Option<&str>, key: &K) -> Option<&V> {
        let Some(name) = group else {
            return self.direct.get(key);
        };
        let group = self.shared.iter().find(|g| &*g.name == name)?;
        group.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// One level of the trie. The node for a filter is reached by following its
/// levels from the root: literal levels through `children`, `+` through `plus`,
/// `#` through `hash`.
#[derive(Debug, Clone)]
struct Node<K, V> {
    /// Keyed by level text. Most nodes have a few children (a scan), some have
    /// thousands (a device id level): then SipHash keeps hostile topic names from
    /// degrading lookups into collision chains.
    children: SmallMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// `#` is always the last level of a valid filter, so this node never has children.
    hash: Option<Box<Node<K, V>>>,
    subscribers: Subscribers<K, V>,
}

impl<K: Eq + Hash, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: SmallMap::new(),
            plus: None,
            hash: None,
            subscribers: Subscribers::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
    }

    fn descendant_count(&self) -> usize {
        let children: usize = self
            .children
            .values()
            .map(|c| 1 + c.descendant_count())
            .sum();
        let plus = self.plus.as_ref().map_or(0, |c| 1 + c.descendant_count());
        let hash = self.hash.as_ref().map_or(0, |c| 1 + c.descendant_count());
        children + plus + hash
    }

    fn find(&self, levels: Split<'_, char>) -> Option<&Node<K, V>> {
        let mut node = self;
        for level in levels {
            node = match level {
                "+" => node.plus.as_deref()?,
                "#" => node.hash.as_deref()?,
                literal => node.children.get(literal)?,
            };
        }
        Some(node)
    }

    /// Visits the subscribers of every filter below `self` that matches the
    /// remaining `levels`; returns how many nodes it looked at.
    ///
    /// `wildcards` is false only at the root for a `$` topic, where `+` and `#`
    /// must not match.
    fn walk<'a, F: FnMut(Match<'a, K, V>)>(
        &'a self,
        mut levels: Split<'_, char>,
        wildcards: bool,
        visit: &mut F,
    ) -> usize {
        let mut looked_at = 1;
        // '#' matches whatever is left, including nothing: "a/#" matches "a".
        if let (true, Some(hash)) = (wildcards, &self.hash) {
            hash.subscribers.visit(visit);
            looked_at += 1;
        }
        match levels.next() {
            None => self.subscribers.visit(visit),
            Some(level) => {
                if let Some(child) = self.children.get(level) {
                    looked_at += child.walk(levels.clone(), true, visit);
                }
                if let (true, Some(plus)) = (wildcards, &self.plus) {
                    looked_at += plus.walk(levels, true, visit);
                }
            }
        }
        looked_at
    }

    /// Removes a subscription below `self`, dropping every node it leaves empty.
    fn remove(&mut self, mut levels: Split<'_, char>, group: Option<&str>, key: &K) -> Option<V> {
        let Some(level) = levels.next() else {
            return self.subscribers.remove(group, key);
        };
        match level {
            "+" => {
                let child = self.plus.as_deref_mut()?;
                let removed = child.remove(levels, group, key);
                if child.is_empty() {
                    self.plus = None;
                }
                removed
            }
            "#" => {
                let child = self.hash.as_deref_mut()?;
                let removed = child.remove(levels, group, key);
                if child.is_empty() {
                    self.hash = None;
                }
                removed
            }
            literal => {
                let child = self.children.get_mut(literal)?;
                let removed = child.remove(levels, group, key);
                if child.is_empty() {
                    // The map gives back capacity it no longer needs.
                    self.children.remove(literal);
                }
                removed
            }
        }
    }
}

/// An index from topic filters to subscribers.
///
/// `K` identifies a subscriber (a session, a peer node, a bridge rule) and `V`
/// is stored per subscription (the broker keeps subscription options there).
/// A key holds at most one subscription per distinct filter text; shared
/// subscriptions `$share/{group}/{filter}` are kept per (group, filter).
///
/// Matching walks only the branches a topic can take: at each level the
/// literal child for that level, the `+` child and the `#` child. Its cost
/// depends on the topic's length and the subscriptions it matches, not on how
/// many other filters are stored. Insert, remove and get are O(levels) (plus
/// O(members) for shared groups).
#[derive(Debug, Clone)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K: Clone + Eq + Hash, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        SubscriptionTrie {
            root: Node::new(),
            len: 0,
        }
    }

    /// Adds or replaces `key`'s subscription to `filter`; a shared filter goes
    /// into its group. Returns the previous value if `key` already had this
    /// exact filter (same group, if shared), in which case a shared member
    /// keeps its place in the group.
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.filter().split('/') {
            node = match level {
                "+" => node.plus.get_or_insert_with(|| Box::new(Node::new())),
                "#" => node.hash.get_or_insert_with(|| Box::new(Node::new())),
                literal => node.children.get_or_insert_with(literal.into(), Node::new),
            };
        }
        let previous = node.subscribers.insert(filter, key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `key`'s subscription to `filter` and returns its value, or
    /// `None` if there was none. Trie nodes left empty are dropped, so memory
    /// follows the live subscriptions rather than their history.
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> Option<V> {
        let removed = self
            .root
            .remove(filter.filter().split('/'), filter.share_group(), key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value stored with `key`'s subscription to `filter`, if any.
    pub fn get(&self, filter: &TopicFilter, key: &K) -> Option<&V> {
        self.root
            .find(filter.filter().split('/'))?
            .subscribers
            .get(filter.share_group(), key)
    }

    /// Calls `visit` once per subscription entry matching `topic`.
    ///
    /// A direct subscription is visited as [`Match::Direct`]; a shared group
    /// whose filter matches is visited once as [`Match::Shared`] with all its
    /// members, in the order they joined, and the caller picks one. A key with
    /// several matching filters is visited once per filter: merging overlaps
    /// (e.g. taking the highest QoS) is the caller's choice. Topics starting
    /// with `$` are not matched by filters whose first level is `+` or `#`.
    ///
    /// The references passed to `visit` live as long as the borrow of the
    /// trie, so a caller may collect them instead of cloning keys. Order of
    /// visits is unspecified.
    pub fn for_each_match<'a, F: FnMut(Match<'a, K, V>)>(&'a self, topic: &str, mut visit: F) {
        self.walk(topic, &mut visit);
    }

    /// Number of (filter, key) subscriptions stored, direct and shared.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes below the root; for tests that check pruning.
    #[doc(hidden)]
    pub fn node_count(&self) -> usize {
        self.root.descendant_count()
    }

    /// Number of trie nodes a match of `topic` looks at, root included; for
    /// tests that check matching skips unrelated filters without timing it.
    #[doc(hidden)]
    pub fn match_node_visits(&self, topic: &str) -> usize {
        self.walk(topic, &mut |_| {})
    }

    fn walk<'a, F: FnMut(Match<'a, K, V>)>(&'a self, topic: &str, visit: &mut F) -> usize {
        let wildcards = !topic.starts_with('$');
        self.root.walk(topic.split('/'), wildcards, visit)
    }
}

impl<K: Clone + Eq + Hash, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::tests::MATCH_CASES;

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::parse(text).expect("test filters are valid")
    }

    /// Every match as (group, filter text, key, value), sorted, shared groups expanded.
    fn matches<K: Clone + Eq + Hash + Ord, V: Clone + Ord>(
        trie: &SubscriptionTrie<K, V>,
        topic: &str,
    ) -> Vec<(Option<String>, String, K, V)> {
        let mut found = Vec::new();
        trie.for_each_match(topic, |m| match m {
            Match::Direct { key, value } => {
                found.push((None, String::new(), key.clone(), value.clone()));
            }
            Match::Shared {
                group,
                filter,
                members,
            } => {
                for (key, value) in members {
                    let group = Some(group.to_owned());
                    found.push((group, filter.to_owned(), key.clone(), value.clone()));
                }
            }
        });
        found.sort();
        found
    }

    fn direct_keys(trie: &SubscriptionTrie<&'static str, u8>, topic: &str) -> Vec<&'static str> {
        matches(trie, topic)
            .into_iter()
            .map(|(_, _, k, _)| k)
            .collect()
    }

    #[test]
    fn trie_agrees_with_the_matching_rules() {
        for &(text, topic, expected) in MATCH_CASES {
            let mut trie = SubscriptionTrie::new();
            trie.insert(&filter(text), 1u32, ());
            let mut visits = 0;
            trie.for_each_match(topic, |_| visits += 1);
            assert_eq!(visits, usize::from(expected), "{text:?} vs {topic:?}");
        }
    }

    #[test]
    fn all_matching_rules_in_one_trie() {
        let mut trie = SubscriptionTrie::new();
        for (index, &(text, _, _)) in MATCH_CASES.iter().enumerate() {
            trie.insert(&filter(text), index, ());
        }
        for &(text, topic, expected) in MATCH_CASES {
            let mut found = false;
            trie.for_each_match(topic, |m| {
                if let Match::Direct { key, .. } = m {
                    found |= MATCH_CASES[*key].0 == text;
                }
            });
            assert_eq!(found, expected, "{text:?} vs {topic:?}");
        }
    }

    #[test]
    fn one_visit_per_matching_filter_of_a_key() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/b"), "s1", 0);
        trie.insert(&filter("a/+"), "s1", 1);
        trie.insert(&filter("#"), "s1", 2);
        trie.insert(&filter("a/c"), "s1", 3);
        trie.insert(&filter("a/b"), "s2", 4);
        assert_eq!(direct_keys(&trie, "a/b"), ["s1", "s1", "s1", "s2"]);
        assert_eq!(trie.len(), 5);
    }

    #[test]
    fn reinsert_replaces_the_value() {
        let mut trie = SubscriptionTrie::new();
        let f = filter("a/+");
        assert_eq!(trie.insert(&f, "s1", 1), None);
        assert_eq!(trie.insert(&f, "s1", 2), Some(1));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.get(&f, &"s1"), Some(&2));
        assert_eq!(matches(&trie, "a/x"), [(None, String::new(), "s1", 2)]);

        let shared = filter("$share/g/a/+");
        assert_eq!(
            trie.insert(&shared, "s1", 3),
            None,
            "a shared filter is another filter"
        );
        assert_eq!(trie.insert(&shared, "s1", 4), Some(3));
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.get(&shared, &"s1"), Some(&4));
        assert_eq!(trie.get(&f, &"s1"), Some(&2));
    }

    #[test]
    fn get_and_remove_unknown_subscriptions() {
        let mut trie: SubscriptionTrie<&str, u8> = SubscriptionTrie::new();
        trie.insert(&filter("a/b"), "s1", 1);
        trie.insert(&filter("$share/g/a/b"), "s1", 2);
        for (text, key) in [
            ("a/b", "s2"),
            ("a", "s1"),
            ("a/b/c", "s1"),
            ("a/+", "s1"),
            ("a/#", "s1"),
            ("$share/h/a/b", "s1"),
            ("$share/g/a/b", "s2"),
            ("$share/g/a", "s1"),
        ] {
            assert_eq!(trie.get(&filter(text), &key), None, "{text} {key}");
            assert_eq!(trie.remove(&filter(text), &key), None, "{text} {key}");
        }
        assert_eq!(trie.len(), 2);
        let nodes = trie.node_count();
        assert_eq!(nodes, 2, "a failed remove must not create or drop nodes");
    }

    #[test]
    fn shared_groups() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("$share/g1/sensors/+"), "s1", 1);
        trie.insert(&filter("$share/g2/sensors/+"), "s2", 2);
        trie.insert(&filter("$share/g1/sensors/+"), "s3", 3);
        trie.insert(&filter("$share/g1/sensors/+"), "s4", 4);
        trie.insert(&filter("$share/g1/sensors/#"), "s1", 5);
        trie.insert(&filter("sensors/+"), "s1", 6);
        assert_eq!(trie.len(), 6);

        let mut groups = Vec::new();
        let mut direct = Vec::new();
        trie.for_each_match("sensors/t1", |m| match m {
            Match::Direct { key, value } => direct.push((*key, *value)),
            Match::Shared {
                group,
                filter,
                members,
            } => groups.push((group, filter, members.to_vec())),
        });
        groups.sort();
        assert_eq!(direct, [("s1", 6)]);
        assert_eq!(
            groups,
            [
                ("g1", "sensors/#", vec![("s1", 5)]),
                ("g1", "sensors/+", vec![("s1", 1), ("s3", 3), ("s4", 4)]),
                ("g2", "sensors/+", vec![("s2", 2)]),
            ]
        );

        // Replacing keeps the member's place; removing keeps the others' order.
        assert_eq!(
            trie.insert(&filter("$share/g1/sensors/+"), "s1", 10),
            Some(1)
        );
        assert_eq!(trie.remove(&filter("$share/g1/sensors/+"), &"s3"), Some(3));
        fn members_of(
            trie: &SubscriptionTrie<&'static str, i32>,
            group: &str,
        ) -> Option<Vec<(&'static str, i32)>> {
            let mut found = None;
            trie.for_each_match("sensors/t1", |m| {
                if let Match::Shared {
                    group: g,
                    filter: "sensors/+",
                    members,
                } = m
                {
                    if g == group {
                        found = Some(members.to_vec());
                    }
                }
            });
            found
        }
        assert_eq!(members_of(&trie, "g1"), Some(vec![("s1", 10), ("s4", 4)]));
        trie.insert(&filter("$share/g1/sensors/+"), "s3", 11);
        assert_eq!(
            members_of(&trie, "g1"),
            Some(vec![("s1", 10), ("s4", 4), ("s3", 11)])
        );

        // A group with no members left is not visited.
        assert_eq!(trie.remove(&filter("$share/g2/sensors/+"), &"s2"), Some(2));
        assert_eq!(members_of(&trie, "g2"), None);
        assert_eq!(trie.len(), 5);

        // Shared groups follow the same matching rules.
        trie.insert(&filter("$share/g3/#"), "s9", 9);
        assert!(matches(&trie, "$SYS/x").is_empty());
        assert_eq!(matches(&trie, "other").len(), 1);
    }

    #[test]
    fn matched_references_outlive_the_visitor() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/+"), String::from("s1"), 1);
        trie.insert(&filter("a/#"), String::from("s2"), 2);
        let mut keys: Vec<&String> = Vec::new();
        trie.for_each_match("a/b", |m| {
            if let Match::Direct { key, .. } = m {
                keys.push(key);
            }
        });
        keys.sort();
        assert_eq!(keys, ["s1", "s2"]);
    }

    #[test]
    fn removing_everything_prunes_every_node() {
        let texts = [
            "a",
            "a/b/c",
            "a/b/c/d",
            "a/+/c",
            "a/#",
            "+",
            "#",
            "+/+/#",
            "/",
            "//",
            "a//b",
            "$SYS/#",
            "$share/g/a/b/c",
            "$share/h/a/b/c",
            "$share/g/+/#",
        ];
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.node_count(), 0);
        for key in 0..3 {
            for text in texts {
                trie.insert(&filter(text), key, text);
            }
        }
        assert_eq!(trie.len(), 3 * texts.len());
        assert!(trie.node_count() > 0);
        // Remove in an order unrelated to insertion so inner nodes go before leaves.
        for key in [1, 0, 2] {
            for text in texts.iter().rev() {
                assert_eq!(trie.remove(&filter(text), &key), Some(*text));
            }
        }
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 0);
        assert!(matches(&trie, "a/b/c").is_empty());
    }

    #[test]
    fn churn_does_not_grow_the_trie() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("keep/+"), 0u32, ());
        let baseline = trie.node_count();
        for i in 0..1_000u32 {
            let f = filter(&format!("client/{i}/cmd/#"));
            trie.insert(&f, i, ());
            assert_eq!(trie.remove(&f, &i), Some(()));
        }
        assert_eq!(trie.node_count(), baseline);
        assert_eq!(trie.len(), 1);
    }

    #[test]
    fn remove_keeps_nodes_still_in_use() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter("a/b"), 1, ());
        trie.insert(&filter("a/b/c"), 1, ());
        trie.insert(&filter("a/b"), 2, ());
        trie.remove(&filter("a/b/c"), &1);
        assert_eq!(trie.node_count(), 2);
        trie.remove(&filter("a/b"), &1);
        assert_eq!(trie.node_count(), 2);
        assert_eq!(matches(&trie, "a/b"), [(None, String::new(), 2, ())]);
        trie.remove(&filter("a/b"), &2);
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn dollar_topics_skip_only_leading_wildcards() {
        let mut trie = SubscriptionTrie::new();
        for (key, text) in ["#", "+/x", "+", "$SYS/#", "$SYS/+", "$SYS/x/#", "+/#"]
            .into_iter()
            .enumerate()
        {
            trie.insert(&filter(text), key, ());
        }
        let keys = |topic| -> Vec<usize> {
            matches(&trie, topic)
                .into_iter()
                .map(|(_, _, k, _)| k)
                .collect()
        };
        assert_eq!(keys("$SYS/x"), [3, 4, 5]);
        assert_eq!(keys("$SYS"), [3]);
        assert_eq!(keys("SYS/x"), [0, 1, 6]);
    }

    #[test]
    fn many_non_matching_filters_are_not_visited() {
        let mut trie = SubscriptionTrie::new();
        for i in 0..100_000u32 {
            // Siblings of the matching path at every depth, wildcards included.
            let text = match i % 4 {
                0 => format!("dev/{i}/temp"),
                1 => format!("dev/+/{i}"),
                2 => format!("{i}/#"),
                _ => format!("+/{i}/+"),
            };
            trie.insert(&filter(&text), i, ());
        }
        trie.insert(&filter("dev/42/temp"), 1_000_000, ());
        trie.insert(&filter("dev/+/temp"), 1_000_001, ());
        trie.insert(&filter("#"), 1_000_002, ());
        assert_eq!(trie.len(), 100_003);

        let mut visited: Vec<u32> = matches(&trie, "dev/42/temp")
            .into_iter()
            .map(|(_, _, k, _)| k)
            .collect();
        visited.sort_unstable();
        // None of the 100,000 matches: "dev/42/temp" would need i = 42, which is 2 mod 4.
        assert_eq!(visited, [1_000_000, 1_000_001, 1_000_002]);
        // root, "#", "dev", "dev/42", "dev/42/temp", "dev/+", "dev/+/temp" and "+" (which has no
        // "42" child): the walk never enumerates the siblings.
        assert_eq!(trie.match_node_visits("dev/42/temp"), 8);
    }

    #[test]
    fn clone_and_default() {
        let mut trie: SubscriptionTrie<u8, u8> = SubscriptionTrie::default();
        assert!(trie.is_empty());
        trie.insert(&filter("a"), 1, 1);
        let copy = trie.clone();
        trie.remove(&filter("a"), &1);
        assert_eq!(copy.get(&filter("a"), &1), Some(&1));
        assert_eq!(copy.len(), 1);
    }
}
