//! Interned names.
//!
//! A cluster repeats the same few strings (namespaces, service names, port names) hundreds of
//! thousands of times, so the index keeps each distinct string once, behind a reference count.
//! The pool forgets a string when no object refers to it any more ([`NamePool::purge`]); the agent
//! runs for weeks while pods come and go, so an interner that never forgets would leak.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A shared, immutable string from a [`NamePool`]. Cloning costs a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// A name outside any pool (tests, one-off values).
    pub fn new(s: &str) -> Self {
        Name(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name::new(s)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Deduplicates strings into [`Name`]s.
#[derive(Default, Debug)]
pub struct NamePool {
    names: HashSet<Name>,
}

impl NamePool {
    /// The pooled name equal to `s`, adding it if new.
    pub fn intern(&mut self, s: &str) -> Name {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        let n = Name::new(s);
        self.names.insert(n.clone());
        n
    }

    /// Drops names that only the pool still holds.
    pub fn purge(&mut self) {
        self.names.retain(|n| Arc::strong_count(&n.0) > 1);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_shares_and_purging_forgets() {
        let mut pool = NamePool::default();
        let a = pool.intern("default");
        let b = pool.intern("default");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let c = pool.intern("gone");
        drop(c);
        pool.purge();
        assert_eq!(pool.len(), 1);
        assert_eq!(&*a, "default");
    }
}
