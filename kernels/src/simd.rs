//! Runtime CPU-feature dispatch for the kernels' own loops.
//!
//! The crate is built for baseline x86-64 (SSE2), so the BatchNorm loops vectorised to 4 lanes.
//! `multiversion!` compiles a leaf function twice, once with AVX2 enabled, and picks at run time.
//! Results are bit-identical either way: the loops use explicit lanes, and Rust never contracts a
//! multiply and an add into an FMA on its own, so only the vector width changes.

/// Whether this CPU runs the AVX2 versions (detected once, then a cached load).
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `multiversion! { fn name(args) -> R { body } }`: defines `name`, which runs `body` compiled
/// with AVX2 when the CPU has it, else the baseline build of the same body.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if $crate::simd::has_avx2() {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;
