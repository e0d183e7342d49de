//! A strided f32 matrix product over the `gemm` crate, plus the thread-count policy.
//!
//! Every convolution pass is one of three products over views of existing buffers (weights,
//! im2col columns, output-gradient planes). Describing operands as pointer + row/column strides lets
//! transposes be free: `gemm` packs its operands anyway, so a transposed view costs nothing extra.

use gemm::Parallelism;

/// A read-only strided matrix view: element (i, j) lives at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl MatRef {
    /// A row-major matrix with leading dimension `ld`.
    pub fn row_major(ptr: *const f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: ld as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub fn transposed(ptr: *const f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: 1,
            cs: ld as isize,
        }
    }
}

/// A writable strided matrix view, see [`MatRef`].
#[derive(Clone, Copy)]
pub(crate) struct MatMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

impl MatMut {
    pub fn row_major(ptr: *mut f32, ld: usize) -> Self {
        Self {
            ptr,
            rs: ld as isize,
            cs: 1,
        }
    }
}

/// Below this many multiply-adds a product runs on the calling thread: splitting it across
/// threads costs more in synchronisation than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 22;

/// `dst (m×n) = [dst +] a (m×k) · b (k×n)`.
///
/// `threads` is the most threads the product may use; small products use one regardless.
///
/// # Safety
/// Every view must be valid for its extent (m×k, k×n, m×n with the given strides), `dst` must
/// not alias `a` or `b`, and no other thread may touch `dst`'s elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: MatMut,
    accumulate: bool,
    a: MatRef,
    b: MatRef,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m as isize {
                for j in 0..n as isize {
                    *dst.ptr.offset(i * dst.rs + j * dst.cs) = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // gemm computes dst := alpha·dst + beta·(lhs·rhs); alpha is only read when read_dst. The
    // pinned entry fixes gemm's K blocking on every CPU (vendor/candle-core pinned_gemm.rs).
    candle_core::cpu_backend::pinned_gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.cs,
        dst.rs,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0f32,
        1.0f32,
        1.0f32,
        parallelism,
    )
}

/// The K block length the GEMM uses for an `m×k · k×n` product: it sums each block's products in
/// registers and adds the block to the destination, so matching its sums means matching this.
/// Pinned (the same on every CPU), see `candle_core::cpu_backend::pinned_gemm`.
pub(crate) fn k_block(m: usize, n: usize, k: usize) -> usize {
    candle_core::cpu_backend::pinned_gemm::k_block(m, n, k)
}
