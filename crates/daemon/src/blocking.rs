//! Short blocking file work from async code that holds a lock.

/// Run short blocking file work (an fsynced append) while an async lock is held: on the
/// multi-thread runtime the worker hands its other tasks off first; on a current-thread
/// runtime (some tests) there is no one to hand them to, so it runs inline.
pub fn blocking_in_place<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
