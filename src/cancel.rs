//! Cooperative cancellation of long work.
//!
//! Long loops (IG chunks, decoder layers, samples of a batch) call [`check`] between
//! iterations. It fails with [`Cancelled`] once the flag installed for the current thread by
//! [`with_flag`] is set: by the server when a request times out or its client goes away (so
//! the heavy-work lock is freed), by the script host on Ctrl-C. Without a flag installed,
//! [`check`] always succeeds.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static CURRENT: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// The error of cancelled work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled (time limit reached or interrupted)")
    }
}

impl std::error::Error for Cancelled {}

/// Runs `f` with `flag` as this thread's cancellation flag (the previous one is restored
/// afterwards, also when `f` panics).
pub fn with_flag<T>(flag: Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Arc<AtomicBool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CURRENT.with(|c| c.borrow_mut().replace(flag));
    let _restore = Restore(prev);
    f()
}

/// The flag installed for this thread, if any (to hand to worker threads).
pub fn current_flag() -> Option<Arc<AtomicBool>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Whether the current thread's work was cancelled.
pub fn is_cancelled() -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    })
}

/// `Err(Cancelled)` once the current thread's work was cancelled.
pub fn check() -> Result<(), Cancelled> {
    if is_cancelled() {
        Err(Cancelled)
    } else {
        Ok(())
    }
}

/// Sets its flag when dropped: hold it in the future that waits for the work, so a dropped
/// (timed-out or disconnected) request cancels the work it started.
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_sees_the_installed_flag_only() {
        assert!(check().is_ok());
        let flag = Arc::new(AtomicBool::new(false));
        with_flag(flag.clone(), || {
            assert!(check().is_ok());
            flag.store(true, Ordering::SeqCst);
            assert_eq!(check(), Err(Cancelled));
        });
        assert!(check().is_ok(), "the flag is removed after with_flag");
        let f2 = Arc::new(AtomicBool::new(false));
        {
            let _g = CancelOnDrop(f2.clone());
        }
        assert!(f2.load(Ordering::SeqCst));
    }
}
