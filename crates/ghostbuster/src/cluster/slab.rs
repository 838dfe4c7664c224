//! A vector with stable slot ids and a free list.
//!
//! The index refers to services, slices and pods by `u32` slot instead of by key, which keeps the
//! reverse tables (frontend → service port, IP → endpoint) to a few bytes per entry.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::model::ObjectKey;

/// Stable-id storage; removed slots are reused.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        if let Some(id) = self.free.pop() {
            self.slots[id as usize] = Some(value);
            id
        } else {
            self.slots.push(Some(value));
            u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 objects")
        }
    }

    pub fn remove(&mut self, id: u32) -> Option<T> {
        let v = self.slots.get_mut(id as usize)?.take()?;
        self.free.push(id);
        self.len -= 1;
        Some(v)
    }

    pub fn get(&self, id: u32) -> Option<&T> {
        self.slots.get(id as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }
}

/// What a [`KeyedSlab`] finds its objects by.
pub trait Keyed {
    fn key(&self) -> &ObjectKey;
}

/// A [`Slab`] whose objects are also found by their `namespace/name`. The key → id table holds
/// only the 4-byte ids, hashed by the key their object already stores: a
/// `HashMap<ObjectKey, u32>` would spend 40 bytes a slot on a second copy of every key.
///
/// The objects are boxed: a slab grows by doubling, so up to half of its slots are spare, and a
/// spare slot costs 8 bytes instead of a whole Service, slice or pod.
pub struct KeyedSlab<T> {
    slab: Slab<Box<T>>,
    ids: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for KeyedSlab<T> {
    fn default() -> Self {
        KeyedSlab {
            slab: Slab::default(),
            ids: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for KeyedSlab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.slab.iter()).finish()
    }
}

impl<T: Keyed> KeyedSlab<T> {
    fn hash(&self, namespace: &str, name: &str) -> u64 {
        self.hasher.hash_one((namespace, name))
    }

    /// The id of the object named `namespace/name`.
    pub fn id_of(&self, namespace: &str, name: &str) -> Option<u32> {
        let slab = &self.slab;
        let named = |&id: &u32| {
            slab.get(id)
                .is_some_and(|o| *o.key().namespace == *namespace && *o.key().name == *name)
        };
        self.ids.find(self.hash(namespace, name), named).copied()
    }

    pub fn id(&self, key: &ObjectKey) -> Option<u32> {
        self.id_of(&key.namespace, &key.name)
    }

    pub fn get(&self, id: u32) -> Option<&T> {
        self.slab.get(id).map(|b| &**b)
    }

    pub fn by_key(&self, key: &ObjectKey) -> Option<&T> {
        self.get(self.id(key)?)
    }

    /// Stores `value` under its key: in place of the object of the same key, which is returned,
    /// or in a new slot.
    pub fn upsert(&mut self, value: T) -> (u32, Option<T>) {
        if let Some(id) = self.id(value.key()) {
            if let Some(slot) = self.slab.get_mut(id) {
                return (id, Some(std::mem::replace(&mut **slot, value)));
            }
        }
        let hash = self.hash(&value.key().namespace, &value.key().name);
        let id = self.slab.insert(Box::new(value));
        let (slab, hasher) = (&self.slab, &self.hasher);
        let rehash = |&id: &u32| {
            let key = slab.get(id).map(|o| o.key());
            hasher.hash_one(key.map_or(("", ""), |k| (k.namespace.as_str(), k.name.as_str())))
        };
        self.ids.insert_unique(hash, id, rehash);
        (id, None)
    }

    pub fn remove(&mut self, id: u32) -> Option<T> {
        let key = self.slab.get(id)?.key();
        let hash = self.hash(&key.namespace, &key.name);
        if let Ok(entry) = self.ids.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        self.slab.remove(id).map(|b| *b)
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slab.iter().map(|(id, b)| (id, &**b))
    }

    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.slab.iter().map(|(_, o)| o.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_reused() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.get(a), None);
        assert_eq!(s.insert("c"), a);
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(99), None);
    }

    struct Named(ObjectKey, u8);

    impl Keyed for Named {
        fn key(&self) -> &ObjectKey {
            &self.0
        }
    }

    #[test]
    fn keyed_slab_finds_by_key_replaces_in_place_and_forgets_removed() {
        let mut s = KeyedSlab::default();
        let (a, old) = s.upsert(Named(ObjectKey::new("ns", "a"), 1));
        assert!(old.is_none());
        let (b, _) = s.upsert(Named(ObjectKey::new("ns", "b"), 2));
        let (a2, old) = s.upsert(Named(ObjectKey::new("ns", "a"), 3));
        assert_eq!((a2, old.map(|n| n.1)), (a, Some(1)));
        assert_eq!(s.by_key(&ObjectKey::new("ns", "a")).map(|n| n.1), Some(3));
        assert_eq!(s.id_of("ns", "b"), Some(b));
        assert_eq!(s.id_of("other", "b"), None);
        assert_eq!(s.remove(a).map(|n| n.1), Some(3));
        assert_eq!(s.id_of("ns", "a"), None);
        assert_eq!(s.len(), 1);
        // Enough to make the table grow (rehash through the stored keys).
        for i in 0..1000 {
            s.upsert(Named(ObjectKey::new("ns", &format!("p{i}")), 0));
        }
        assert!((0..1000).all(|i| s.id_of("ns", &format!("p{i}")).is_some()));
        assert_eq!(s.id_of("ns", "b"), Some(b));
    }
}
