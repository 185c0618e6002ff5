//! Faults in a host KV pool's fresh blocks ahead of use, on a thread of idle priority.
//!
//! The pool is one zeroed allocation that the operating system backs page by page as sequences
//! first write to it, so that a large pool costs resident memory only as it fills. That first
//! write happens inside a step, on the step's critical path, and on a virtual machine whose
//! host also backs guest memory lazily it is slow: on the Firecracker VMs phive is benchmarked
//! on, faulting in fresh memory runs at about 375 MB/s, so the 6.3 MB that 8 Phi-3.5 streams
//! add per decode step (f32) cost ~17 ms of a ~150 ms step. The warmer faults in the next
//! blocks the allocator will hand out (it hands out fresh blocks in ascending order) with
//! `MADV_POPULATE_WRITE`, which leaves contents alone, so it can run beside the steps that read
//! and write the pool. Under `SCHED_IDLE` it only takes CPU time nobody else wants.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Bytes of fresh blocks kept faulted in beyond the highest block in use: resident memory
/// spent ahead of need, against how long a burst of new positions (a prefill) finds warm
/// blocks.
pub(super) const AHEAD_BYTES: usize = 256 << 20;

/// The warmer thread and what it is asked to do.
#[derive(Debug)]
pub(super) struct Warmer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Blocks `0..target` should be faulted in.
    target: usize,
    stop: bool,
}

/// Where one block lives in each of the pool's stores.
#[derive(Debug, Clone)]
pub(super) struct Regions {
    /// Address and length in bytes of every store.
    pub stores: Vec<(usize, usize)>,
    /// Bytes of one block in one store.
    pub block_bytes: usize,
}

impl Warmer {
    /// Starts the thread; `None` where the platform has no way to fault pages in ahead.
    ///
    /// # Safety
    /// Every store in `regions` must stay allocated, unmoved, until the warmer is dropped.
    pub(super) unsafe fn spawn(regions: Regions) -> Option<Self> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("phive-kv-warmer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared, &regions)
            })
            .ok()?;
        Some(Self { shared, thread: Some(thread) })
    }

    /// Asks for blocks `0..blocks` to be faulted in (those already are stay so).
    pub(super) fn warm_through(&self, blocks: usize) {
        let mut state = self.shared.state.lock().expect("warmer lock");
        if blocks > state.target {
            state.target = blocks;
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.shared.state.lock().expect("warmer lock").stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: waits for a higher target, then faults in one block at a time up to it.
fn run(shared: &Shared, regions: &Regions) {
    lower_priority();
    let mut warmed = 0;
    loop {
        let target = {
            let mut state = shared.state.lock().expect("warmer lock");
            while !state.stop && state.target <= warmed {
                state = shared.wake.wait(state).expect("warmer lock");
            }
            if state.stop {
                return;
            }
            state.target
        };
        while warmed < target {
            if shared.state.lock().expect("warmer lock").stop || !populate(regions, warmed) {
                return;
            }
            warmed += 1;
        }
    }
}

/// Faults in block `block` of every store; false where the kernel cannot (before Linux 5.14).
fn populate(regions: &Regions, block: usize) -> bool {
    #[cfg(target_os = "linux")]
    for &(start, len) in &regions.stores {
        const PAGE: usize = 4096;
        // The block's pages, never past the store's own whole pages.
        let from = (start + block * regions.block_bytes) / PAGE * PAGE;
        let to = (start + (block + 1) * regions.block_bytes).next_multiple_of(PAGE);
        let (from, to) = (from.max(start.next_multiple_of(PAGE)), to.min((start + len) / PAGE * PAGE));
        // SAFETY: the range lies in a live store (`Warmer::spawn`'s contract), and
        // MADV_POPULATE_WRITE only makes its pages resident, never changing what they hold.
        if to > from
            && unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_POPULATE_WRITE) } != 0
        {
            return false;
        }
    }
    true
}

/// `SCHED_IDLE` for the calling thread: it runs only when a core would otherwise idle.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain system call on the calling thread (pid 0) with a valid parameter.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    const PAGE: usize = 4096;

    /// Whether each page of `bytes` (page-aligned) is resident.
    fn resident(bytes: &[u8]) -> Vec<bool> {
        let mut pages = vec![0u8; bytes.len().div_ceil(PAGE)];
        // SAFETY: `bytes` starts a page of a mapping; `pages` has a byte per page.
        let rc =
            unsafe { libc::mincore(bytes.as_ptr() as *mut libc::c_void, bytes.len(), pages.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore");
        pages.iter().map(|p| p & 1 == 1).collect()
    }

    #[test]
    fn the_warmer_faults_in_the_blocks_asked_for_and_keeps_their_contents() {
        // 16 blocks of 256 KiB (64 pages), straight from the kernel: none resident yet.
        let (block_bytes, blocks) = (64 * PAGE, 16);
        let len = block_bytes * blocks;
        let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
        // SAFETY: a fresh anonymous mapping, unmapped at the end of the test.
        let map = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: `len` readable and writable bytes, used only through this slice.
        let store = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), len) };
        assert!(resident(store).iter().all(|r| !r), "a fresh mapping is not resident");
        store[block_bytes + 5] = 42;

        let regions = Regions { stores: vec![(map as usize, len)], block_bytes };
        // SAFETY: the mapping outlives the warmer.
        let warmer = unsafe { Warmer::spawn(regions) }.expect("a warmer on Linux");
        warmer.warm_through(3);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !resident(&store[..3 * block_bytes]).iter().all(|&r| r) {
            assert!(Instant::now() < deadline, "blocks 0..3 never became resident");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(warmer);
        let pages = 3 * block_bytes / PAGE;
        assert!(resident(store)[pages..].iter().all(|r| !r), "blocks past the target stay untouched");
        assert_eq!(store[block_bytes + 5], 42, "the warmer changes no contents");
        assert!(store.iter().enumerate().all(|(i, &b)| b == 0 || i == block_bytes + 5));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(map, len) };
    }
}
