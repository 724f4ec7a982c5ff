//! A global allocator that counts allocations, for tests and benchmarks that show a warm hot path
//! allocates nothing. Included with `#[path]` by the test and benchmark binaries that need it;
//! it is no crate's API.
//!
//! Two counts: per thread (immune to tests running alongside) and process-wide (which also sees
//! worker threads, for binaries that run one thing at a time, such as benchmarks).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts every allocation and reallocation, then forwards it to the system allocator.
pub struct CountingAllocator;

thread_local! {
    static THIS_THREAD: Cell<u64> = const { Cell::new(0) };
}

static EVERYWHERE: AtomicU64 = AtomicU64::new(0);

fn count_one() {
    EVERYWHERE.fetch_add(1, Ordering::Relaxed);
    // `try_with`: during thread teardown the counter may be gone; such allocations are not ours.
    let _ = THIS_THREAD.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the contract.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations made by this thread while `work` ran.
#[allow(dead_code)]
pub fn allocations_on_this_thread(work: impl FnOnce()) -> u64 {
    let before = THIS_THREAD.with(Cell::get);
    work();
    THIS_THREAD.with(Cell::get) - before
}

/// Allocations made by every thread of the process while `work` ran.
#[allow(dead_code)]
pub fn allocations_everywhere(work: impl FnOnce()) -> u64 {
    let before = EVERYWHERE.load(Ordering::SeqCst);
    work();
    EVERYWHERE.load(Ordering::SeqCst) - before
}
