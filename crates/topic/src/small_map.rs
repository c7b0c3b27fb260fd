//! A map that is a plain `Vec` of pairs while it holds few entries and a hash map
//! beyond that.
//!
//! A broker keeps millions of tiny maps: the subscribers of one trie node, the
//! children of one level, one session's filters. Nearly all hold one or two entries,
//! and an empty `std::collections::HashMap` already takes 48 bytes inline, then at
//! least four buckets (about 150 bytes for a small key and value) at the first insert.
//! This one takes 24 bytes inline and, while small, exactly what its entries need; a
//! scan of a few entries is also faster than hashing. Past [`FEW`] entries it turns
//! into a boxed `HashMap` (SipHash, so hostile keys cannot build collision chains),
//! and back once most of them are gone.

use std::borrow::Borrow;
use std::collections::{hash_map, HashMap};
use std::hash::Hash;

/// Entries held as a `Vec` at most; one more turns the map into a hash map.
pub const FEW: usize = 8;

/// Entries a hash map goes back to a `Vec` at (below [`FEW`], so that a map whose
/// size moves around the boundary does not convert on every change).
const BACK_TO_FEW: usize = FEW / 2;

/// See the [module documentation](self).
#[derive(Clone)]
pub struct SmallMap<K, V>(Repr<K, V>);

#[derive(Clone)]
enum Repr<K, V> {
    Few(Vec<(K, V)>),
    // Boxed on purpose: inline, the 48-byte map would make every small map 48 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<K, V>>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V> SmallMap<K, V> {
    /// An empty map; it allocates nothing until the first insert.
    pub const fn new() -> Self {
        SmallMap(Repr::Few(Vec::new()))
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(pairs) => pairs.len(),
            Repr::Many(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> Iter<'_, K, V> {
        match &self.0 {
            Repr::Few(pairs) => Iter::Few(pairs.iter()),
            Repr::Many(map) => Iter::Many(map.iter()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match &self.0 {
            Repr::Few(pairs) => pairs
                .iter()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            Repr::Many(map) => map.get(key),
        }
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match &mut self.0 {
            Repr::Few(pairs) => pairs
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            Repr::Many(map) => map.get_mut(key),
        }
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts `value` under `key`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Repr::Few(pairs) = &mut self.0 {
            if let Some((_, old)) = pairs.iter_mut().find(|(k, _)| *k == key) {
                return Some(std::mem::replace(old, value));
            }
            if pairs.len() < FEW {
                pairs.push((key, value));
                return None;
            }
            self.grow();
        }
        match &mut self.0 {
            Repr::Many(map) => map.insert(key, value),
            Repr::Few(_) => unreachable!("grown above"),
        }
    }

    /// The value under `key`, inserted from `make` first if there is none.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if let Repr::Few(pairs) = &self.0 {
            if pairs.len() >= FEW && !pairs.iter().any(|(k, _)| *k == key) {
                self.grow();
            }
        }
        match &mut self.0 {
            Repr::Few(pairs) => {
                let at = match pairs.iter().position(|(k, _)| *k == key) {
                    Some(at) => at,
                    None => {
                        pairs.push((key, make()));
                        pairs.len() - 1
                    }
                };
                &mut pairs[at].1
            }
            Repr::Many(map) => map.entry(key).or_insert_with(make),
        }
    }

    /// Removes `key`; returns its value. The order of the other entries may change.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match &mut self.0 {
            Repr::Few(pairs) => {
                let at = pairs.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, value) = pairs.swap_remove(at);
                if pairs.is_empty() {
                    // An emptied map holds nothing, as a new one.
                    *pairs = Vec::new();
                }
                Some(value)
            }
            Repr::Many(map) => {
                let value = map.remove(key)?;
                if map.len() <= BACK_TO_FEW {
                    let map = std::mem::take(map.as_mut());
                    self.0 = Repr::Few(map.into_iter().collect());
                } else if map.capacity() > 8 * map.len() {
                    // A map that once held many keeps its capacity: give most back.
                    map.shrink_to_fit();
                }
                Some(value)
            }
        }
    }

    fn grow(&mut self) {
        if let Repr::Few(pairs) = &mut self.0 {
            let mut map = HashMap::with_capacity(pairs.len() * 2);
            map.extend(std::mem::take(pairs));
            self.0 = Repr::Many(Box::new(map));
        }
    }
}

impl<'a, K, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The entries of a [`SmallMap`], in no particular order.
pub enum Iter<'a, K, V> {
    Few(std::slice::Iter<'a, (K, V)>),
    Many(hash_map::Iter<'a, K, V>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(pairs) => pairs.next().map(|(k, v)| (k, v)),
            Iter::Many(map) => map.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Few(pairs) => pairs.size_hint(),
            Iter::Many(map) => map.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every operation agrees with a `BTreeMap` across both representations and the
    /// way back, for keys that keep crossing the boundary.
    #[test]
    fn behaves_as_a_map_on_both_sides_of_the_boundary() {
        let mut small = SmallMap::new();
        let mut model = BTreeMap::new();
        // A fixed pseudo-random walk of inserts and removes over 40 keys.
        let mut x: u32 = 12345;
        for step in 0..20_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let key = (x >> 16) % 40;
            let remove = step % 3 == 0 || (x >> 8) % 5 == 0;
            if remove {
                assert_eq!(small.remove(&key), model.remove(&key), "remove {key}");
            } else if step % 2 == 0 {
                assert_eq!(
                    small.insert(key, step),
                    model.insert(key, step),
                    "insert {key}"
                );
            } else {
                let got = *small.get_or_insert_with(key, || step);
                assert_eq!(
                    got,
                    *model.entry(key).or_insert(step),
                    "get_or_insert {key}"
                );
            }
            assert_eq!(small.len(), model.len());
            for k in 0..40 {
                assert_eq!(small.get(&k), model.get(&k));
            }
            let mut pairs: Vec<(u32, u32)> = small.iter().map(|(k, v)| (*k, *v)).collect();
            pairs.sort_unstable();
            assert_eq!(
                pairs,
                model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn turns_into_a_hash_map_past_few_entries_and_back_when_most_are_gone() {
        let mut map = SmallMap::new();
        for k in 0..FEW {
            map.insert(k, ());
        }
        assert!(matches!(map.0, Repr::Few(_)));
        map.insert(FEW, ());
        assert!(matches!(map.0, Repr::Many(_)));
        for k in 0..=FEW - BACK_TO_FEW {
            map.remove(&k);
        }
        assert!(matches!(map.0, Repr::Few(_)));
        assert_eq!(map.len(), BACK_TO_FEW);
    }

    #[test]
    fn an_emptied_map_holds_no_memory_and_is_small_inline() {
        let mut map: SmallMap<String, u32> = SmallMap::new();
        map.insert("a".into(), 1);
        map.remove("a");
        assert!(matches!(&map.0, Repr::Few(pairs) if pairs.capacity() == 0));
        assert_eq!(std::mem::size_of::<SmallMap<String, u32>>(), 24);
    }
}
