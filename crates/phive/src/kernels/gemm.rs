//! f32 matrix products on the `gemm` crate (the one candle's CPU matmul calls), for kernels that
//! work around a product (reused buffers, strided heads), and the per-thread buffers and shared
//! outputs of the hand-written kernels.

/// A matrix in memory: element `(i, j)` at `ptr + i·row + j·col`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided {
    pub ptr: *const f32,
    pub row: isize,
    pub col: isize,
}

impl Strided {
    /// Row-major with rows `stride` apart.
    pub fn rows(ptr: *const f32, stride: usize) -> Self {
        Self { ptr, row: stride as isize, col: 1 }
    }

    /// The transpose of a row-major matrix whose rows are `stride` apart: element `(i, j)` is
    /// the source's `(j, i)`.
    pub fn transposed(ptr: *const f32, stride: usize) -> Self {
        Self { ptr, row: 1, col: stride as isize }
    }
}

/// Two f32 buffers a kernel's task may fill and reuse.
pub(crate) type Scratch = [Vec<f32>; 2];

/// `f` with this thread's scratch buffers. They persist per thread, so the tasks of a rayon
/// loop reuse two allocations instead of each allocating its own (which, spread over
/// the workers' malloc arenas, raised the peak memory of a Phi-4 image request by hundreds of
/// MB). `f` must not start rayon work that could run another task on this thread.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
    }
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// An output buffer shared by parallel tasks that each write their own disjoint elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: users write disjoint elements only, and the buffer outlives the tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Shares `buffer` (the tasks must finish before it is read or dropped).
    pub fn new(buffer: &mut [f32]) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// Shares the spare capacity of an empty `buffer`, for tasks that write every element
    /// before the caller sets its length: large products need no zeroing pass first.
    pub fn spare(buffer: &mut Vec<f32>) -> Self {
        debug_assert!(buffer.is_empty());
        Self(buffer.as_mut_ptr())
    }

    /// The element at `offset`.
    pub fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// `dst = scale · lhs · rhs` for `lhs` `[m, k]` and `rhs` `[k, n]`; `dst` is row-major `[m, n]`
/// with rows `dst_stride` apart. With `parallel`, the product is split over rayon's threads.
///
/// # Safety
/// Every element the shapes and strides address must be valid: readable for `lhs` and `rhs`,
/// writable for `dst`, and no other thread may touch `dst`'s elements meanwhile.
#[allow(clippy::too_many_arguments)] // a gemm's shape, operands and scale
pub(crate) unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_stride: usize,
    lhs: Strided,
    rhs: Strided,
    scale: f32,
    parallel: bool,
) {
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            false,
            lhs.ptr,
            lhs.col,
            lhs.row,
            rhs.ptr,
            rhs.col,
            rhs.row,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_products_match_a_plain_loop() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 1.5).collect(); // [n, k]: used transposed
        let mut out = vec![0f32; m * (n + 2)];
        // SAFETY: the shapes and strides stay inside the buffers.
        unsafe {
            product(
                m,
                n,
                k,
                out.as_mut_ptr(),
                n + 2,
                Strided::rows(a.as_ptr(), k),
                Strided::transposed(b.as_ptr(), k),
                2.0,
                true,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 2.0 * (0..k).map(|x| a[i * k + x] * b[j * k + x]).sum::<f32>();
                assert_eq!(out[i * (n + 2) + j], want, "({i}, {j})");
            }
            assert_eq!(&out[i * (n + 2) + n..(i + 1) * (n + 2)], &[0.0, 0.0], "padding untouched");
        }
    }
}
