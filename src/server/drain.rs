//! Graceful shutdown for connections, without a shared lock per request.
//!
//! hyper-util's `GracefulShutdown` polls a watch channel's `changed()` on
//! every wake of every connection, and each such poll takes a mutex that
//! all connections share: under load, the cores took turns on it for every
//! request. Here a connection registers its task's waker once, then only
//! reads a flag that changes once; [`Drain::start`] sets the flag and wakes
//! the registered tasks.

use crate::sync::Locked;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

#[derive(Default)]
pub struct Drain {
    closing: AtomicBool,
    next_id: AtomicU64,
    /// The tasks to wake on [`Drain::start`], by connection.
    waiting: Mutex<HashMap<u64, Waker>>,
}

impl Drain {
    /// Asks every connection, running or yet to come, to finish the
    /// request in flight and close.
    pub fn start(&self) {
        self.closing.store(true, Ordering::Release);
        let waiting = std::mem::take(&mut *self.lock());
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    /// Runs `conn` to its end; once the drain starts, calls `close` on it
    /// (hyper's `graceful_shutdown`) and goes on polling it. The returned
    /// future must stay in one task (it is spawned), so the waker
    /// registered on its first poll stays the one to wake.
    pub fn run<F: Future>(
        self: &Arc<Self>,
        conn: F,
        close: impl FnOnce(Pin<&mut F>),
    ) -> impl Future<Output = F::Output> {
        let mut watch = Watch {
            drain: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            registered: false,
            closed: false,
        };
        let mut close = Some(close);
        async move {
            let mut conn = std::pin::pin!(conn);
            std::future::poll_fn(|cx| {
                if watch.closing(cx) {
                    if let Some(close) = close.take() {
                        close(conn.as_mut());
                    }
                }
                conn.as_mut().poll(cx)
            })
            .await
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.waiting.locked()
    }
}

/// One connection's registration.
struct Watch {
    drain: Arc<Drain>,
    id: u64,
    registered: bool,
    closed: bool,
}

impl Watch {
    /// True once, when the drain has started.
    fn closing(&mut self, cx: &Context<'_>) -> bool {
        if self.closed {
            return false;
        }
        if !self.drain.closing.load(Ordering::Acquire) {
            if self.registered {
                return false;
            }
            let mut waiting = self.drain.lock();
            // Checked again under the lock: `start` sets the flag before it
            // takes the lock, so either it sees this waker or this sees it.
            if !self.drain.closing.load(Ordering::Acquire) {
                waiting.insert(self.id, cx.waker().clone());
                self.registered = true;
                return false;
            }
        }
        self.closed = true;
        true
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.registered && !self.closed {
            self.drain.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    /// A connection that finishes only after it was asked to close.
    struct Conn {
        asked: Arc<AtomicUsize>,
    }

    impl Future for Conn {
        type Output = &'static str;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.asked.load(Ordering::SeqCst) > 0 {
                Poll::Ready("closed")
            } else {
                Poll::Pending
            }
        }
    }

    fn conn(drain: &Arc<Drain>) -> (tokio::task::JoinHandle<&'static str>, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let c = Conn {
            asked: asked.clone(),
        };
        let counter = asked.clone();
        let task = tokio::spawn(drain.run(c, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        (task, asked)
    }

    #[tokio::test]
    async fn start_wakes_every_waiting_connection_and_closes_each_once() {
        let drain = Arc::new(Drain::default());
        let conns: Vec<_> = (0..3).map(|_| conn(&drain)).collect();
        tokio::task::yield_now().await;
        for (task, asked) in &conns {
            assert!(!task.is_finished());
            assert_eq!(asked.load(Ordering::SeqCst), 0);
        }
        assert_eq!(drain.lock().len(), 3, "each registered once");
        drain.start();
        for (task, asked) in conns {
            assert_eq!(task.await.unwrap(), "closed");
            assert_eq!(asked.load(Ordering::SeqCst), 1);
        }
        assert!(drain.lock().is_empty());
    }

    #[tokio::test]
    async fn a_connection_after_start_is_closed_at_once() {
        let drain = Arc::new(Drain::default());
        drain.start();
        let (task, asked) = conn(&drain);
        assert_eq!(task.await.unwrap(), "closed");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(drain.lock().is_empty(), "nothing left registered");
    }

    #[tokio::test]
    async fn a_finished_connection_leaves_no_waker_behind() {
        let drain = Arc::new(Drain::default());
        let done = drain.run(std::future::ready(7), |_| {});
        // Polled once (registering), then finished and dropped.
        assert_eq!(tokio::spawn(done).await.unwrap(), 7);
        let (task, _) = conn(&drain);
        tokio::task::yield_now().await;
        task.abort();
        let _ = task.await;
        assert!(drain.lock().is_empty());
    }
}
