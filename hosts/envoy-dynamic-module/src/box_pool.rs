//! Emptied boxes kept for reuse: a worker's ended streams leave their allocations for its next
//! streams (`hooks`), so a stream costs no `malloc`/`free` pair for its state. Host-free, so
//! that it is tested natively (`hooks` is not compiled in tests).

use std::mem::MaybeUninit;

/// Emptied boxes (their allocations) kept for reuse, at most `limit`.
pub struct BoxPool<T> {
    boxes: Vec<Box<MaybeUninit<T>>>,
    limit: usize,
}

impl<T> BoxPool<T> {
    pub const fn new(limit: usize) -> Self {
        Self {
            boxes: Vec::new(),
            limit,
        }
    }

    pub fn take(&mut self) -> Option<Box<MaybeUninit<T>>> {
        self.boxes.pop()
    }

    /// Keep `slot` (freed instead when the pool is full).
    pub fn keep(&mut self, slot: Box<MaybeUninit<T>>) {
        if self.boxes.len() < self.limit {
            self.boxes.push(slot);
        }
    }
}

/// `value` in `slot`, or in a new box.
pub fn fill<T>(slot: Option<Box<MaybeUninit<T>>>, value: T) -> Box<T> {
    match slot {
        Some(slot) => Box::write(slot, value),
        None => Box::new(value),
    }
}

/// `boxed`'s value dropped, its allocation kept.
pub fn vacate<T>(boxed: Box<T>) -> Box<MaybeUninit<T>> {
    let raw = Box::into_raw(boxed);
    // SAFETY: `raw` is a live, owned `T` (from the box): dropped once here, after which its
    // allocation, of `T`'s layout, is owned as uninitialised memory of the same layout.
    unsafe {
        std::ptr::drop_in_place(raw);
        Box::from_raw(raw.cast::<MaybeUninit<T>>())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Counts its drops.
    struct Counted(Rc<Cell<u32>>, u64);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_box_pool_reuses_allocations_and_drops_each_value_once() {
        let drops = Rc::new(Cell::new(0));
        let mut pool = BoxPool::new(1);
        let first = fill(pool.take(), Counted(drops.clone(), 1));
        let address = std::ptr::from_ref(&*first).addr();
        pool.keep(vacate(first));
        assert_eq!(drops.get(), 1);
        // The next value goes into the same allocation.
        let second = fill(pool.take(), Counted(drops.clone(), 2));
        assert_eq!(std::ptr::from_ref(&*second).addr(), address);
        assert_eq!(second.1, 2);
        assert!(pool.take().is_none());
        // Beyond the limit an emptied box is freed, its value dropped all the same.
        let third = fill(None, Counted(drops.clone(), 3));
        pool.keep(vacate(second));
        pool.keep(vacate(third));
        assert_eq!(drops.get(), 3);
        assert_eq!(pool.boxes.len(), 1);
        // Dropping the pool frees the kept allocations without dropping a value again.
        drop(pool);
        assert_eq!(drops.get(), 3);
    }
}
