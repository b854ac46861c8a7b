//! Work spread over every core, for the start-up steps whose cost grows
//! with the number of sources: parsing a large file, checking its sources,
//! registering them. On one core the others would wait; the figures are
//! in docs/performance.md.

use crate::sync::Locked;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `f` applied to every item on as many threads as there are cores (the
/// calling one included), the results in the items' order. A thread that
/// cannot be started leaves its share to the others. Called on a tokio
/// runtime, the threads are in it too (`f` may spawn tasks).
pub fn map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads < 2 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<Mutex<(Option<T>, Option<R>)>> = items
        .into_iter()
        .map(|item| Mutex::new((Some(item), None)))
        .collect();
    let next = AtomicUsize::new(0);
    let work = || {
        while let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) {
            let item = slot.locked().0.take();
            if let Some(item) = item {
                let result = f(item);
                slot.locked().1 = Some(result);
            }
        }
    };
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|s| {
        for _ in 1..threads {
            let _ = std::thread::Builder::new()
                .name("tokend-cores".to_string())
                .spawn_scoped(s, || {
                    let _in_runtime = runtime.as_ref().map(|r| r.enter());
                    work();
                });
        }
        work();
    });
    slots
        .into_iter()
        .filter_map(|slot| slot.into_inner().unwrap_or_else(|p| p.into_inner()).1)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_order_of_the_items() {
        let items: Vec<u32> = (0..1000).collect();
        let out = super::map(items, |i| {
            // Uneven work, so threads finish out of order.
            std::thread::sleep(std::time::Duration::from_micros(u64::from(i % 7)));
            i * 2
        });
        assert_eq!(out, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    }
}
