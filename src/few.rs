//! A list that is almost always one element long, kept inline until it is
//! not: per name, the record usually holds one generation and a scan
//! usually finds one inode in every host dir. At 100,000s of names a heap
//! allocation per name is most of the memory.

/// One element inline, or more on the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Few<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Copy + PartialEq> Few<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            Few::One(t) => std::slice::from_ref(t),
            Few::Many(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub fn contains(&self, t: &T) -> bool {
        self.as_slice().contains(t)
    }

    pub fn push(&mut self, t: T) {
        match self {
            Few::One(a) => *self = Few::Many(vec![*a, t]),
            Few::Many(v) => v.push(t),
        }
    }

    pub fn last_mut(&mut self) -> Option<&mut T> {
        match self {
            Few::One(t) => Some(t),
            Few::Many(v) => v.last_mut(),
        }
    }

    /// Keeps the elements `keep` accepts; a single survivor moves back
    /// inline.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut v: Vec<T> = self
            .as_slice()
            .iter()
            .copied()
            .filter(|t| keep(t))
            .collect();
        *self = if v.len() == 1 {
            Few::One(v[0])
        } else {
            v.shrink_to_fit();
            Few::Many(v)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::Few;

    #[test]
    fn grows_from_one_and_shrinks_back() {
        let mut f = Few::One(1);
        assert_eq!(f.as_slice(), &[1]);
        f.push(2);
        f.push(3);
        assert_eq!(f.as_slice(), &[1, 2, 3]);
        assert!(f.contains(&2) && !f.contains(&4));
        f.retain(|&x| x != 2);
        assert_eq!(f, Few::Many(vec![1, 3]));
        f.retain(|&x| x == 3);
        assert_eq!(f, Few::One(3));
        f.retain(|_| false);
        assert!(f.is_empty());
        assert_eq!(f.len(), 0);
        assert_eq!(f.last_mut(), None);
        let mut g = Few::One(7);
        if let Some(x) = g.last_mut() {
            *x = 8;
        }
        assert_eq!(g, Few::One(8));
    }

    #[test]
    fn is_no_bigger_than_a_vec_plus_tag() {
        assert!(std::mem::size_of::<Few<crate::fsops::FileId>>() <= 32);
    }
}
