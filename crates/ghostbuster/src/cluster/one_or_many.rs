//! A multimap value that does not allocate for the common case of one entry.
//!
//! Almost every IP is one endpoint of one service, and almost every frontend belongs to one service
//! port; a `Vec` per key would cost a heap allocation each (100,000 of them at the budget's scale),
//! and even an inline `Vec` would make every hash-table slot 16 bytes wider: the rare many-case is
//! boxed.

/// One value inline, or several on the heap.
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    #[allow(clippy::box_collection)] // a thin pointer keeps the common `One` slot small
    Many(Box<Vec<T>>),
}

impl<T: Copy + PartialEq> OneOrMany<T> {
    pub fn push(&mut self, v: T) {
        match self {
            OneOrMany::One(first) => *self = OneOrMany::Many(Box::new(vec![*first, v])),
            OneOrMany::Many(vs) => vs.push(v),
        }
    }

    /// Removes the values matching `pred`; returns true when nothing is left.
    pub fn remove_where(&mut self, pred: impl Fn(&T) -> bool) -> bool {
        match self {
            OneOrMany::One(v) => pred(v),
            OneOrMany::Many(vs) => {
                vs.retain(|v| !pred(v));
                match vs.as_slice() {
                    [] => true,
                    [one] => {
                        *self = OneOrMany::One(*one);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(vs) => vs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_shrinks() {
        let mut m = OneOrMany::One(1);
        m.push(2);
        m.push(3);
        assert_eq!(m.as_slice(), &[1, 2, 3]);
        assert!(!m.remove_where(|&v| v != 2));
        assert!(matches!(m, OneOrMany::One(2)));
        assert!(m.remove_where(|&v| v == 2));
    }
}
