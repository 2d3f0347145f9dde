//! A waker that counts its wakes, for the tests of the stream wrappers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Wake, Waker};

#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker, and how many times it was woken.
pub struct CountedWaker {
    count: Arc<Count>,
    waker: Waker,
}

impl CountedWaker {
    pub fn new() -> Self {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        CountedWaker { count, waker }
    }

    /// A context to poll with.
    pub fn cx(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }

    /// Wakes so far.
    pub fn wakes(&self) -> usize {
        self.count.0.load(Ordering::SeqCst)
    }
}
