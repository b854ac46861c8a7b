//! Handing freed memory back to the system.
//!
//! glibc keeps freed heap pages for the process; a large parse done once
//! (a config of thousands of sources) would otherwise stay in the daemon's
//! RSS for good.

/// Drops `value` on a blocking thread, then returns the free heap pages to
/// the system: off the caller's way.
pub fn release<T: Send + 'static>(value: T) {
    tokio::task::spawn_blocking(move || {
        drop(value);
        trim();
    });
}

/// Hands free heap pages back to the system (glibc keeps them otherwise).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Free heap space glibc keeps at the top of a heap before handing it back
/// by itself. Its default (128 KiB, for threads' heaps) is crossed back
/// and forth under load: freeing a connection's read buffer gave back a
/// few pages (a madvise call) that the next request faulted in again, on
/// the request's path. Start-up and reloads still trim the heap in full.
const KEEP_FREE: i32 = 1 << 20;

/// Allocations up to this size come from the heap, so that memory freed
/// is used again. Setting [`KEEP_FREE`] stops glibc from raising its own
/// threshold (128 KiB) as it goes; left there, every large buffer of a
/// config parse would be a fresh mapping, faulted in page by page.
const FROM_HEAP: i32 = 16 << 20;

/// Sets how the allocator hands memory back (see [`KEEP_FREE`] and
/// [`FROM_HEAP`]); call it first thing in a long-running process.
pub fn settle() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tunables.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE);
        libc::mallopt(libc::M_MMAP_THRESHOLD, FROM_HEAP);
    }
}
