//! Cooperative cancellation of a stage's blocking work.
//!
//! The worker runtime gives every message a [`CancellationToken`] ([`current`]) and cancels it
//! when the message passes its processing limit. Aborting the async task cannot stop a thread in
//! `spawn_blocking`, so a stage runs its blocking work inside [`run_cancellable`]: the token is then
//! the thread's, and the decoders' readers ([`CancellableRead`]) and the stages' loops
//! ([`check`]) stop at their next read or step once it is cancelled, instead of running on for
//! seconds after the job failed `timed_out`.

use std::cell::RefCell;
use std::io::Read;

pub use tokio_util::sync::CancellationToken;

tokio::task_local! {
    static MESSAGE_TOKEN: CancellationToken;
}

thread_local! {
    static THREAD_TOKEN: RefCell<Option<CancellationToken>> = const { RefCell::new(None) };
}

/// The message's token inside the runtime's processing of one message; outside it (tests, CLI),
/// a token nobody cancels.
pub fn current() -> CancellationToken {
    MESSAGE_TOKEN.try_with(CancellationToken::clone).unwrap_or_default()
}

/// Runs `future` (one message's processing) with `token` as its [`current`] token.
pub async fn scope<F: std::future::Future>(token: CancellationToken, future: F) -> F::Output {
    MESSAGE_TOKEN.scope(token, future).await
}

/// Runs blocking `work` on this thread with `token` as the thread's: [`check`] and
/// [`CancellableRead`] inside it see the token.
pub fn run_cancellable<T>(token: CancellationToken, work: impl FnOnce() -> T) -> T {
    let _installed = ThreadToken::install(token);
    work()
}

/// The token of the blocking work on this thread while the guard lives (the previous one after).
pub struct ThreadToken(Option<CancellationToken>);

impl ThreadToken {
    pub fn install(token: CancellationToken) -> ThreadToken {
        ThreadToken(THREAD_TOKEN.with(|slot| slot.replace(Some(token))))
    }
}

impl Drop for ThreadToken {
    fn drop(&mut self) {
        let previous = self.0.take();
        THREAD_TOKEN.with(|slot| *slot.borrow_mut() = previous);
    }
}

/// Whether the blocking work on this thread has been cancelled.
pub fn is_cancelled() -> bool {
    THREAD_TOKEN.with(|slot| slot.borrow().as_ref().is_some_and(CancellationToken::is_cancelled))
}

/// The error blocking work returns when it stops because it was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the work was cancelled: the stage passed its processing limit")]
pub struct Cancelled;

/// `Err(Cancelled)` once this thread's work is cancelled: for a stage's loop, each step.
pub fn check() -> Result<(), Cancelled> {
    if is_cancelled() { Err(Cancelled) } else { Ok(()) }
}

/// A reader that fails once the work that made it is cancelled (an `io::Error` holding
/// [`Cancelled`]), so a decoder inflating a large stream stops at its next read. It takes the
/// token of the thread that makes it, and keeps it: clones read on other threads (a zip's entries
/// decoded in parallel) stop too.
#[derive(Debug, Clone)]
pub struct CancellableRead<R> {
    inner: R,
    token: Option<CancellationToken>,
}

impl<R> CancellableRead<R> {
    pub fn new(inner: R) -> CancellableRead<R> {
        CancellableRead { inner, token: THREAD_TOKEN.with(|slot| slot.borrow().clone()) }
    }
}

impl<R: Read> Read for CancellableRead<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.token.as_ref().is_some_and(CancellationToken::is_cancelled) {
            return Err(std::io::Error::other(Cancelled));
        }
        self.inner.read(buffer)
    }
}

impl<R: std::io::Seek> std::io::Seek for CancellableRead<R> {
    fn seek(&mut self, position: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_token_stops_reads_and_checks_on_its_thread_only() {
        let token = CancellationToken::new();
        let mut buffer = [0u8; 16];
        let mut outside = CancellableRead::new(std::io::Cursor::new(vec![7u8; 64]));
        let mut clone = run_cancellable(token.clone(), || {
            let mut reader = CancellableRead::new(std::io::Cursor::new(vec![7u8; 64]));
            assert_eq!(reader.read(&mut buffer).unwrap(), 16);
            assert_eq!(check(), Ok(()));
            let clone = reader.clone();
            token.cancel();
            let error = reader.read(&mut buffer).unwrap_err();
            assert!(error.to_string().contains("cancelled"), "{error}");
            assert_eq!(check(), Err(Cancelled));
            clone
        });
        assert!(!is_cancelled(), "outside run_cancellable the thread has no token");
        let on_another_thread = std::thread::spawn(move || clone.read(&mut [0u8; 4]).is_err()).join().unwrap();
        assert!(on_another_thread, "a clone keeps its token wherever it is read");
        assert_eq!(outside.read(&mut buffer).unwrap(), 16, "a reader made outside has no token");
    }

    #[tokio::test]
    async fn the_message_token_is_seen_inside_its_scope() {
        assert!(!current().is_cancelled());
        let token = CancellationToken::new();
        token.cancel();
        assert!(scope(token, async { current().is_cancelled() }).await);
    }
}
