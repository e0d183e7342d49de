//! Per-thread scratch buffers reused across kernel calls.
//!
//! A training step runs each kernel hundreds of times with the same few sizes; allocating im2col
//! and staging buffers afresh for each call costs page faults and zeroing that showed up as a fifth
//! of a step in profiles. Each thread keeps its buffers and grows them as needed.

use std::cell::RefCell;

/// The buffers one kernel invocation needs at the same time.
#[derive(Default)]
pub(crate) struct Scratch {
    /// im2col columns (or their gradient).
    pub cols: Vec<f32>,
    /// Staging for a packed GEMM operand or result (output rows, gathered output gradient).
    pub stage: Vec<f32>,
    /// A third buffer for kernels that need one (the direct weight gradient's transposed dY).
    pub aux: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers. If they are already in use on this thread (a
/// kernel reached again through rayon work-stealing while waiting inside another), `f` gets
/// fresh buffers instead of panicking.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// A mutable slice of exactly `len` elements from `buf`, growing it if needed. Contents are
/// unspecified (left over from earlier use): callers overwrite every element they read.
pub(crate) fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}
