//! Access to the f32 buffers behind CPU tensors, and the layout checks the kernels rely on.

use candle_core::{Layout, Result, Storage, Tensor};

/// Runs `f` on the f32 buffer behind a CPU tensor together with its layout (which says where in
/// that buffer the tensor's elements are).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu.as_slice::<f32>()?, layout),
        _ => candle_core::bail!("semiflow kernels: expected a CPU tensor"),
    }
}

/// The contiguous f32 elements of a CPU tensor (which must be contiguous).
pub(crate) fn with_contiguous_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_f32(t, |s, l| match l.contiguous_offsets() {
        Some((a, b)) => f(&s[a..b]),
        None => candle_core::bail!("semiflow kernels: expected a contiguous tensor"),
    })
}

/// A rank-4 layout whose (image, channel) planes are contiguous H×W blocks; image and channel
/// strides are free.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanarView {
    pub offset: usize,
    /// Image stride.
    pub sn: usize,
    /// Channel stride.
    pub sc: usize,
}

impl PlanarView {
    pub fn new(l: &Layout) -> Result<Self> {
        let (&[_, _, h, w], &[sn, sc, sh, sw]) = (l.dims(), l.stride()) else {
            candle_core::bail!(
                "semiflow kernels: expected a rank-4 tensor, got {:?}",
                l.dims()
            )
        };
        if (sw != 1 && w > 1) || (sh != w && h > 1) {
            candle_core::bail!(
                "semiflow kernels: H×W planes are not contiguous (strides {:?})",
                l.stride()
            );
        }
        Ok(Self {
            offset: l.start_offset(),
            sn,
            sc,
        })
    }

    /// Offset of image `b`'s first channel.
    pub fn image(&self, b: usize) -> usize {
        self.offset + b * self.sn
    }
}

/// A raw pointer handed to rayon workers that write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: used only for buffers whose workers write provably disjoint element ranges.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. A method rather than field access so closures capture the whole (Send)
    /// wrapper instead of the bare pointer field.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// A vector of `len` floats for a kernel output that the kernel fully overwrites. Skipping the
/// zero fill matters: with the allocator reusing freed blocks, calloc-style zeroing is a full
/// extra pass over every activation.
pub(crate) fn uninit_vec(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns, and every caller writes all `len` elements before
    // the vector is read or handed out.
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(len)
    };
    v
}
