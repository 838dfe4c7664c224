//! A multimap that stores no keys.
//!
//! The index's reverse tables (backend IP → slice endpoints, Service → slices, pod IP → pods) map a
//! key that the slabs already hold (in the slice, in the pod) to references into those slabs. A
//! `HashMap` would store every key a second time: an `IpAddr` is 17 bytes, padded to 24 beside an
//! 8-byte-aligned value, so each slot is 40 bytes. Here a slot is only the references (16 bytes),
//! and the key is read back through them when the table compares or rehashes: ~22 bytes an entry
//! instead of ~53 at 100,000 endpoints.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use super::one_or_many::OneOrMany;

/// Key → references, each reference able to give back the key it is filed under.
///
/// Every method takes `key_of`, which reads a reference's key out of the storage it points into.
/// So that it always can, a reference must be pulled out of the table *before* what it points at
/// is removed or replaced.
#[derive(Debug)]
pub struct KeylessMultimap<R> {
    table: HashTable<OneOrMany<R>>,
    hasher: foldhash::fast::RandomState,
}

impl<R> Default for KeylessMultimap<R> {
    fn default() -> Self {
        KeylessMultimap {
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<R: Copy + PartialEq> KeylessMultimap<R> {
    /// The references filed under `key`, in the order they were pushed.
    pub fn get<K: Hash + Eq>(&self, key: K, key_of: impl Fn(&R) -> Option<K>) -> &[R] {
        let hash = self.hasher.hash_one(&key);
        self.table
            .find(hash, |refs| files_under(refs, &key, &key_of))
            .map_or(&[], OneOrMany::as_slice)
    }

    /// Files `r` under `key` (after the references already there).
    pub fn push<K: Hash + Eq>(&mut self, key: K, r: R, key_of: impl Fn(&R) -> Option<K>) {
        let hash = self.hasher.hash_one(&key);
        if let Some(refs) = self
            .table
            .find_mut(hash, |refs| files_under(refs, &key, &key_of))
        {
            refs.push(r);
            return;
        }
        // Every reference in the table gives back its key (see above): 0 is never used.
        let hasher = &self.hasher;
        let rehash = |refs: &OneOrMany<R>| {
            let key = refs.as_slice().first().and_then(&key_of);
            key.map_or(0, |k| hasher.hash_one(&k))
        };
        self.table.insert_unique(hash, OneOrMany::One(r), rehash);
    }

    /// Takes the references matching `pred` out of `key`'s.
    pub fn pull<K: Hash + Eq>(
        &mut self,
        key: K,
        key_of: impl Fn(&R) -> Option<K>,
        pred: impl Fn(&R) -> bool,
    ) {
        let hash = self.hasher.hash_one(&key);
        if let Ok(mut entry) = self
            .table
            .find_entry(hash, |refs| files_under(refs, &key, &key_of))
        {
            if entry.get_mut().remove_where(pred) {
                entry.remove();
            }
        }
    }
}

/// True when `refs` are filed under `key` (all of them are filed under the same key).
fn files_under<R: Copy + PartialEq, K: Eq>(
    refs: &OneOrMany<R>,
    key: &K,
    key_of: impl Fn(&R) -> Option<K>,
) -> bool {
    refs.as_slice()
        .first()
        .and_then(key_of)
        .is_some_and(|k| k == *key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_through_the_references() {
        // References are indexes into `keys`; several may share a key.
        let keys = ["a", "b", "a", "c", "a"];
        let key_of = |&i: &usize| keys.get(i).copied();
        let mut m = KeylessMultimap::default();
        for (i, k) in keys.iter().enumerate() {
            m.push(*k, i, key_of);
        }
        assert_eq!(m.get("a", key_of), &[0, 2, 4]);
        assert_eq!(m.get("b", key_of), &[1]);
        assert_eq!(m.get("d", key_of), &[] as &[usize]);
        m.pull("a", key_of, |&i| i == 0);
        assert_eq!(
            m.get("a", key_of),
            &[2, 4],
            "order kept, filed under the next one's key"
        );
        m.pull("b", key_of, |_| true);
        assert_eq!(m.get("b", key_of), &[] as &[usize]);
        // Growing rehashes every slot through its first reference.
        let many: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        let key_of = |&i: &usize| many.get(i).map(String::as_str);
        let mut m = KeylessMultimap::default();
        for (i, k) in many.iter().enumerate() {
            m.push(k.as_str(), i, key_of);
        }
        assert!(many
            .iter()
            .enumerate()
            .all(|(i, k)| m.get(k.as_str(), key_of) == [i]));
    }
}
