//! The flow index's set of keys: one sorted vector, plus two small sets of the changes since it
//! was last written.
//!
//! Keys are at most 96 bits ([`MAX_KEY`]) and the vector stores exactly those 12 bytes (a
//! `u128` would pad each to 16: a quarter of the index at a million entries).
//!
//! Why not a B-tree: at a million entries the keys are most of the agent's heap, and a B-tree's
//! nodes add 16 % to them when built from sorted keys and up to 90 % once inserts have split
//! them (measured: 18.6 and 31.4 bytes a 16-byte key). A sorted vector costs the keys alone.
//! Inserting into or removing from the middle of a million keys would move megabytes per event,
//! so changes collect in two B-trees — `added` (keys not in the vector) and `removed` (keys of
//! the vector that are gone) — and are merged into the vector in one linear pass when they
//! reach a thirty-second of it: at 1,000 changes a second, a merge of a few milliseconds about
//! every half minute at a million entries. The merge works in place (the vector grows by
//! `realloc`, which moves no pages for an allocation this large), so it adds no second copy to
//! the agent's peak.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// Changes are merged into the vector once they number more than `len / MERGE_FRACTION`
/// (and more than [`MERGE_MIN`]).
const MERGE_FRACTION: usize = 32;
/// Below this many changes nothing is merged: small tables stay all-B-tree-cheap.
const MERGE_MIN: usize = 4096;
/// One fence every this many keys of the vector (see `KeySet::fences`).
const BLOCK: usize = 64;

/// The largest key a [`KeySet`] holds: 96 bits.
pub const MAX_KEY: u128 = (1 << 96) - 1;

/// A key as the vector stores it: its low 96 bits, big-endian, so that the bytes' order is the
/// numbers' order. Compared as the number (a byte swap), not byte by byte: a lookup compares
/// ~20 of them, once per conntrack event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Packed([u8; 12]);

impl Ord for Packed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Packed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Packed {
    fn of(k: u128) -> Self {
        debug_assert!(k <= MAX_KEY, "a flow-index key over 96 bits");
        let b = k.to_be_bytes();
        let mut p = [0; 12];
        p.copy_from_slice(&b[4..]);
        Packed(p)
    }

    #[inline]
    fn key(self) -> u128 {
        let mut b = [0; 16];
        b[4..].copy_from_slice(&self.0);
        u128::from_be_bytes(b)
    }
}

/// A set of keys of at most 96 bits, ordered for range queries.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Sorted, unique.
    base: Vec<Packed>,
    /// Every [`BLOCK`]th key of `base` (a quarter of a byte an entry): a lookup searches these
    /// first — they stay in the cache — and then one block of 768 bytes, instead of ~20 probes
    /// spread over megabytes (a cache miss each: measured 0.5 µs more per conntrack event than
    /// a B-tree without them).
    fences: Vec<u128>,
    /// In the set, not in `base`.
    added: BTreeSet<u128>,
    /// In `base`, not in the set.
    removed: BTreeSet<u128>,
}

/// Keys gathered for a [`KeySet`] (a full pass gathers every DNAT'd entry), packed as they come:
/// the set is then built by sorting this vector in place, with no second copy of a million keys.
#[derive(Debug, Default)]
pub struct Gathered(Vec<Packed>);

impl Gathered {
    pub fn push(&mut self, k: u128) {
        self.0.push(Packed::of(k));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl KeySet {
    /// The set of `keys` (any order, duplicates allowed).
    #[cfg(test)]
    pub fn from_vec(keys: Vec<u128>) -> Self {
        Self::from_gathered(Gathered(keys.into_iter().map(Packed::of).collect()))
    }

    /// The set of the gathered keys (any order, duplicates allowed), sorted in place.
    pub fn from_gathered(keys: Gathered) -> Self {
        let mut base = keys.0;
        base.sort_unstable();
        base.dedup();
        base.shrink_to_fit();
        let mut set = KeySet {
            base,
            ..KeySet::default()
        };
        set.set_fences();
        set
    }

    fn set_fences(&mut self) {
        self.fences = self.base.iter().step_by(BLOCK).map(|p| p.key()).collect();
    }

    /// The number of keys of the vector for which `below` holds (it must hold for a prefix):
    /// the fences first, then the one block where it stops holding.
    fn partition(&self, below: impl Fn(u128) -> bool) -> usize {
        let b = self.fences.partition_point(|f| below(*f));
        if b == 0 {
            return 0;
        }
        let lo = (b - 1) * BLOCK;
        let hi = (b * BLOCK).min(self.base.len());
        lo + self.base[lo..hi].partition_point(|p| below(p.key()))
    }

    fn in_base(&self, k: &u128) -> bool {
        let i = self.partition(|x| x < *k);
        self.base.get(i).is_some_and(|p| p.key() == *k)
    }

    /// The part of the vector within `range`.
    fn base_range(&self, range: &RangeInclusive<u128>) -> &[Packed] {
        let lo = self.partition(|x| x < *range.start());
        let hi = self.partition(|x| x <= *range.end());
        &self.base[lo..hi.max(lo)]
    }

    #[cfg(test)]
    pub fn contains(&self, k: &u128) -> bool {
        self.added.contains(k) || (self.in_base(k) && !self.removed.contains(k))
    }

    /// Adds `k`; true if it was not there.
    pub fn insert(&mut self, k: u128) -> bool {
        let new = if self.in_base(&k) {
            self.removed.remove(&k)
        } else {
            self.added.insert(k)
        };
        if new {
            self.merge_if_due();
        }
        new
    }

    /// Removes `k`; true if it was there.
    pub fn remove(&mut self, k: &u128) -> bool {
        let gone = self.added.remove(k) || (self.in_base(k) && self.removed.insert(*k));
        if gone {
            self.merge_if_due();
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.base.len() - self.removed.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys in `range`, in no particular order.
    pub fn range(&self, range: RangeInclusive<u128>) -> impl Iterator<Item = u128> + '_ {
        self.base_range(&range)
            .iter()
            .map(|p| p.key())
            .filter(|k| !self.removed.contains(k))
            .chain(self.added.range(range).copied())
    }

    /// How many keys are in `range`.
    pub fn count(&self, range: RangeInclusive<u128>) -> usize {
        self.base_range(&range).len() - self.removed.range(range.clone()).count()
            + self.added.range(range).count()
    }

    /// Every key, in order (straight from the vector when no change is pending, as after
    /// [`KeySet::from_vec`]).
    pub fn iter(&self) -> Box<dyn Iterator<Item = u128> + '_> {
        if self.added.is_empty() && self.removed.is_empty() {
            return Box::new(self.base.iter().map(|p| p.key()));
        }
        let mut all: Vec<u128> = self.range(0..=MAX_KEY).collect();
        all.sort_unstable();
        Box::new(all.into_iter())
    }

    /// The heap it holds: the vector's capacity, and the pending changes with their B-tree
    /// nodes (about 1.5 times a key each).
    pub fn heap_bytes(&self) -> usize {
        let pending = std::mem::size_of::<u128>() * 3 / 2;
        self.base.capacity() * std::mem::size_of::<Packed>()
            + self.fences.capacity() * std::mem::size_of::<u128>()
            + (self.added.len() + self.removed.len()) * pending
    }

    fn merge_if_due(&mut self) {
        let pending = self.added.len() + self.removed.len();
        if pending > MERGE_MIN.max(self.base.len() / MERGE_FRACTION) {
            self.merge();
        }
    }

    /// Writes the pending changes into the vector, in place: the removed keys are squeezed out
    /// front to back, then the added ones merged in back to front into the grown vector.
    fn merge(&mut self) {
        let removed = std::mem::take(&mut self.removed);
        if !removed.is_empty() {
            let mut gone = removed.iter().map(|k| Packed::of(*k)).peekable();
            self.base.retain(|k| {
                while gone.next_if(|g| g < k).is_some() {}
                gone.next_if_eq(k).is_none()
            });
        }
        let added = std::mem::take(&mut self.added);
        if added.is_empty() {
            self.set_fences();
            return;
        }
        let old = self.base.len();
        self.base.reserve_exact(added.len());
        self.base.resize(old + added.len(), Packed::default());
        // Back to front: the largest remaining key of either goes to the last free slot.
        let (mut read, mut write) = (old, old + added.len());
        let mut news = added.iter().rev().map(|k| Packed::of(*k)).peekable();
        while let Some(&n) = news.peek() {
            write -= 1;
            if read > 0 && self.base[read - 1] > n {
                read -= 1;
                self.base[write] = self.base[read];
            } else {
                self.base[write] = n;
                news.next();
            }
        }
        self.set_fences();
    }

    #[cfg(test)]
    fn pending(&self) -> usize {
        self.added.len() + self.removed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no dependency for a test's randomness).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    /// The set against a `BTreeSet` model through tens of thousands of random inserts and
    /// removes (with merges on the way), checking every answer and the contents at the end.
    #[test]
    fn behaves_as_a_set_through_merges() {
        let mut rng = Lcg(7);
        // Keys over the whole 96 bits (each byte of the packed form matters).
        let key = |rng: &mut Lcg| {
            let x = u128::from(rng.next() % 60_000);
            (x << 78) | (x << 30) | x
        };
        let start: Vec<u128> = (0..20_000).map(|_| key(&mut rng)).collect();
        let mut model: BTreeSet<u128> = start.iter().copied().collect();
        let mut set = KeySet::from_vec(start);
        assert_eq!(set.len(), model.len());
        let mut merges = 0;
        for i in 0..200_000 {
            let k = key(&mut rng);
            let before = set.pending();
            if rng.next() % 2 == 0 {
                assert_eq!(set.insert(k), model.insert(k), "insert {k} at step {i}");
            } else {
                assert_eq!(set.remove(&k), model.remove(&k), "remove {k} at step {i}");
            }
            if set.pending() < before {
                merges += 1;
            }
            assert_eq!(set.contains(&k), model.contains(&k));
            if i % 997 == 0 {
                let (lo, hi) = (k.saturating_sub(300 << 78), k + (300 << 78));
                let mut got: Vec<u128> = set.range(lo..=hi).collect();
                got.sort_unstable();
                let want: Vec<u128> = model.range(lo..=hi).copied().collect();
                assert_eq!(got, want, "range {lo}..={hi} at step {i}");
                assert_eq!(set.count(lo..=hi), want.len());
            }
            assert_eq!(set.len(), model.len());
        }
        assert!(merges >= 10, "the changes were merged ({merges} times)");
        assert!(set.iter().eq(model.iter().copied()));
        // Removals alone, through a merge: every key still answers right.
        let gone: Vec<u128> = model.iter().copied().step_by(2).take(6_000).collect();
        for k in &gone {
            assert!(set.remove(k) && model.remove(k));
        }
        set.merge();
        assert_eq!(set.pending(), 0);
        for k in gone.iter().chain(model.iter()) {
            assert_eq!(set.contains(k), model.contains(k), "{k}");
        }
        assert!(set.iter().eq(model.iter().copied()));
    }

    #[test]
    fn a_merge_keeps_the_vector_sorted_and_empties_the_changes() {
        let mut set = KeySet::from_vec((0..40_000u128).map(|k| k * 2).collect());
        // Odd keys in, every fourth even key out: enough to pass the merge threshold.
        for k in 0..3_000u128 {
            assert!(set.insert(k * 2 + 1));
            assert!(set.remove(&(k * 8)));
        }
        assert!(set.pending() < 6_000, "merged on the way");
        set.merge();
        assert_eq!(set.pending(), 0);
        assert!(set.base.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(set.len(), 40_000 + 3_000 - 3_000);
        assert!(set.contains(&1) && !set.contains(&0) && set.contains(&2));
        assert!(!set.contains(&(2_999 * 8)) && set.contains(&(3_000 * 8)));
    }

    #[test]
    fn keys_up_to_96_bits_keep_their_order() {
        let top = [
            MAX_KEY,
            MAX_KEY - 1,
            1 << 95,
            (1 << 64) + 5,
            1 << 64,
            300,
            0,
        ];
        let set = KeySet::from_vec(top.to_vec());
        let mut want = top.to_vec();
        want.sort_unstable();
        assert!(set.iter().eq(want.iter().copied()));
        assert_eq!(set.count(1 << 64..=MAX_KEY), 5);
        assert!(set.contains(&MAX_KEY) && set.contains(&0) && !set.contains(&301));
    }

    #[test]
    fn from_vec_sorts_and_drops_duplicates() {
        let set = KeySet::from_vec(vec![5, 1, 5, 3, 1]);
        assert_eq!(set.len(), 3);
        assert!(set.iter().eq([1, 3, 5]));
        assert_eq!(set.count(2..=5), 2);
        assert!(KeySet::default().is_empty());
    }
}
