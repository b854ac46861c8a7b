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
