//! semiflow patch: `gemm` with its K blocking pinned, so products sum in the same order on every
//! x86-64 CPU with AVX2 + FMA (see vendor/candle-core/PATCHED.md).
//!
//! `gemm` computes each output element as one chain of fused multiply-adds per K block (in order
//! over the inner index, one accumulator per element, whatever the vector width), each chain
//! added to the destination. Its microkernels are fixed once the `x86-v4` feature is off (AVX2 +
//! FMA kernels on every such CPU), so the only machine-dependent choice left in the sums is the K
//! block length `kc`, which `gemm_common::cache::kernel_params` derives from the L1 data cache the
//! CPU reports: 512 for a 32 KiB 8-way L1 (AMD Zen 2/3/4, Intel client cores before Ice Lake),
//! 1024 for Intel's 48 KiB 12-way L1. Products that reach that blocking are split here into the
//! blocks a 32 KiB 8-way L1 gives, and each block is passed to `gemm` alone (a block of at most
//! 512 is never split again). Every other path of `gemm` (small products, dot-product kernels,
//! matrix-vector products) uses fixed block lengths already and is called unchanged. No thread
//! count enters: `gemm`'s threads split rows and columns, never K.

/// `kc` that `gemm` picks on the reference L1 (32 KiB, 8-way, 64-byte lines), f32 and f64 alike
/// with the AVX2 microkernels (`max(512, …)` in `kernel_params`).
pub const PINNED_KC: usize = 512;

/// Whether `gemm` would block this product by its cache-derived `kc` (the strides are those passed
/// to `gemm::gemm`). Mirrors the dispatch of gemm 0.19: the transpose to a row-major destination,
/// then the dot-product kernels (`m·n ≤ 256`, contiguous K), `gevv` (`k ≤ 2`), `gemv` (one row or
/// column) and the small-product path (`m, n ≤ 64`, `kc = min(k, 512)`), all with fixed blocks.
#[allow(clippy::too_many_arguments)]
pub fn reaches_cache_blocking(
    m: usize,
    n: usize,
    k: usize,
    dst_cs: isize,
    dst_rs: isize,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs_cs: isize,
    rhs_rs: isize,
) -> bool {
    let (m, n, dst_cs, dst_rs, lhs_cs, lhs_rs, rhs_cs, rhs_rs) =
        if dst_cs.unsigned_abs() < dst_rs.unsigned_abs() {
            (n, m, dst_rs, dst_cs, rhs_rs, rhs_cs, lhs_rs, lhs_cs)
        } else {
            (m, n, dst_cs, dst_rs, lhs_cs, lhs_rs, rhs_cs, rhs_rs)
        };
    let (dst_cs, dst_rs) = (dst_cs.unsigned_abs(), dst_rs.unsigned_abs());
    let (lhs_cs, lhs_rs) = (lhs_cs.unsigned_abs(), lhs_rs.unsigned_abs());
    let (rhs_cs, rhs_rs) = (rhs_cs.unsigned_abs(), rhs_rs.unsigned_abs());
    if m == 0 || n == 0 || k <= 2 {
        return false;
    }
    if lhs_cs == 1 && rhs_rs == 1 && m * n <= 16 * 16 {
        return false;
    }
    let gemv = (n <= 1 && lhs_rs == 1 && dst_rs == 1)
        || (n <= 1 && lhs_cs == 1 && rhs_rs == 1)
        || (m <= 1 && rhs_cs == 1 && dst_cs == 1)
        || (m <= 1 && rhs_rs == 1 && lhs_cs == 1);
    !gemv && !(m <= 64 && n <= 64)
}

/// The K block length of an `m×k · k×n` product on the pinned path, for kernels that reproduce
/// `gemm`'s sums outside it (semiflow's direct convolutions, `kernels/src/direct.rs` of its
/// `semiflow-kernels` crate; standard packed strides assumed):
/// blocks of this length from the start, the last one shorter.
pub fn k_block(m: usize, n: usize, k: usize) -> usize {
    if k == 0 {
        return 0;
    }
    if m <= 64 && n <= 64 {
        return k.min(PINNED_KC);
    }
    let blocks = k.div_ceil(PINNED_KC);
    k.div_ceil(blocks)
}

/// `gemm::gemm` with the K blocking pinned (same arguments; `one` is the type's 1).
///
/// # Safety
/// As for `gemm::gemm`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm<T: 'static + Copy>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const T,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const T,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: T,
    beta: T,
    one: T,
    parallelism: gemm::Parallelism,
) {
    let call = |depth: usize, kb: usize, read_dst: bool, alpha: T| {
        gemm::gemm(
            m,
            n,
            kb,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs.wrapping_offset(depth as isize * lhs_cs),
            lhs_cs,
            lhs_rs,
            rhs.wrapping_offset(depth as isize * rhs_rs),
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    };
    if !reaches_cache_blocking(m, n, k, dst_cs, dst_rs, lhs_cs, lhs_rs, rhs_cs, rhs_rs) {
        call(0, k, read_dst, alpha);
        return;
    }
    let kc = k_block(m, n, k);
    let mut depth = 0;
    while depth < k {
        let kb = kc.min(k - depth);
        // After the first block `gemm` itself continues with dst = 1·dst + beta·block.
        if depth == 0 {
            call(depth, kb, read_dst, alpha);
        } else {
            call(depth, kb, true, one);
        }
        depth += kb;
    }
}
