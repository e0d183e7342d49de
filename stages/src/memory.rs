//! SimCLRv2's MoCo-style memory (paper §2; the reference code never released it): a FIFO queue of
//! K L2-normalized projections produced by an exponential-moving-average copy of encoder + head.
//!
//! Each step the current batch's anchors get the queue's entries as extra negatives (see
//! [`crate::loss::nt_xent_with_memory`]); after the loss, the EMA network is moved towards the
//! trained one and its projections of the batch's two views are enqueued, evicting the oldest.
//! Only filled slots are used as negatives, so the first steps see fewer than K rather than
//! random vectors (MoCo fills the queue with noise instead; both vanish after K/2N steps).

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};

use crate::loss::l2_normalize;
use crate::model::Network;

/// The memory of a pretraining run: the EMA network and the queue its projections fill.
pub struct Memory {
    pub queue: Queue,
    /// Encoder + full projection head, θ_ema ← m·θ_ema + (1−m)·θ after every step.
    pub ema: Network,
    pub momentum: f64,
}

impl Memory {
    /// A memory of `size` entries whose EMA network starts as a copy of `net`.
    pub fn new(net: &Network, size: usize, momentum: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&momentum),
            "memory.momentum must be in [0, 1], got {momentum}"
        );
        anyhow::ensure!(
            net.has_projection(),
            "the memory needs a network with its full projection head"
        );
        Ok(Memory {
            queue: Queue::new(size, net.arch().proj_dim, net.device())?,
            ema: net.deep_clone()?,
            momentum,
        })
    }

    /// Negatives for this step's loss (`None` until the first enqueue).
    pub fn negatives(&self) -> anyhow::Result<Option<Tensor>> {
        self.queue.negatives()
    }

    /// After the optimizer step: move the EMA network towards `net`, then enqueue its projections
    /// of `x` (the batch's views stacked). The EMA forward uses batch statistics, as MoCo's key
    /// encoder does, and its result is detached.
    pub fn after_step(&mut self, net: &Network, x: &Tensor) -> anyhow::Result<()> {
        self.ema.ema_update(net, self.momentum)?;
        let keys = self.ema.project(x, true)?.detach();
        self.queue.enqueue(&keys)
    }

    /// Checkpoint tensors: queue (`queue`, `queue_ptr_len`) and EMA network (`ema.*`).
    pub fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut out = self.queue.state("")?;
        out.extend(
            self.ema
                .state_tensors()
                .into_iter()
                .map(|(n, t)| (format!("ema.{n}"), t)),
        );
        Ok(out)
    }

    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        self.queue.load_state("", state)?;
        let ema: Vec<(String, Tensor)> = state
            .iter()
            .filter_map(|(n, t)| n.strip_prefix("ema.").map(|s| (s.to_string(), t.clone())))
            .collect();
        self.ema
            .load_state(&ema)
            .context("restoring the memory's EMA network")
    }
}

/// A fixed-capacity ring buffer of projection vectors.
#[derive(Debug, Clone)]
pub struct Queue {
    /// K×D, rows `0..len` valid.
    entries: Tensor,
    /// Next row to overwrite.
    ptr: usize,
    /// Rows filled so far (≤ K).
    len: usize,
}

impl Queue {
    pub fn new(capacity: usize, dim: usize, device: &Device) -> anyhow::Result<Self> {
        anyhow::ensure!(capacity > 0, "memory queue capacity must be positive");
        Ok(Queue {
            entries: Tensor::zeros((capacity, dim), DType::F32, device)?,
            ptr: 0,
            len: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.entries.dim(0).unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `keys` (B×D; L2-normalized here), overwriting the oldest entries when full. When
    /// B > K only the last K keys are kept.
    pub fn enqueue(&mut self, keys: &Tensor) -> anyhow::Result<()> {
        let k = self.capacity();
        let (b, d) = keys.dims2()?;
        let (_, qd) = self.entries.dims2()?;
        anyhow::ensure!(d == qd, "memory queue holds dim {qd}, got keys of dim {d}");
        let keys = l2_normalize(&keys.detach().to_dtype(DType::F32)?)?;
        let keys = if b > k {
            keys.narrow(0, b - k, k)?
        } else {
            keys
        };
        let b = keys.dim(0)?;
        // Split the write at the end of the ring.
        let first = b.min(k - self.ptr);
        self.entries = self
            .entries
            .slice_scatter0(&keys.narrow(0, 0, first)?, self.ptr)?;
        if first < b {
            self.entries = self
                .entries
                .slice_scatter0(&keys.narrow(0, first, b - first)?, 0)?;
        }
        self.ptr = (self.ptr + b) % k;
        self.len = (self.len + b).min(k);
        Ok(())
    }

    /// The filled entries (len×D) to use as negatives, or `None` while empty. Row order is
    /// storage order, which does not matter to the loss.
    pub fn negatives(&self) -> anyhow::Result<Option<Tensor>> {
        if self.len == 0 {
            return Ok(None);
        }
        Ok(Some(self.entries.narrow(0, 0, self.len)?))
    }

    /// Checkpoint tensors: the entries and a (ptr, len) pair.
    pub fn state(&self, prefix: &str) -> anyhow::Result<Vec<(String, Tensor)>> {
        let meta = Tensor::new(&[self.ptr as i64, self.len as i64], &Device::Cpu)?;
        Ok(vec![
            (format!("{prefix}queue"), self.entries.clone()),
            (format!("{prefix}queue_ptr_len"), meta),
        ])
    }

    /// Restore from [`Queue::state`] tensors; the capacity and dim must match.
    pub fn load_state(&mut self, prefix: &str, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        let find = |name: String| {
            state
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.clone())
                .with_context(|| format!("checkpoint lacks memory tensor `{name}`"))
        };
        let entries = find(format!("{prefix}queue"))?;
        anyhow::ensure!(
            entries.dims() == self.entries.dims(),
            "checkpoint memory queue is {:?}, this run's is {:?}",
            entries.dims(),
            self.entries.dims()
        );
        let meta = find(format!("{prefix}queue_ptr_len"))?.to_vec1::<i64>()?;
        anyhow::ensure!(meta.len() == 2, "memory queue pointer must hold (ptr, len)");
        let k = self.capacity() as i64;
        anyhow::ensure!(
            (0..k).contains(&meta[0]) && (0..=k).contains(&meta[1]),
            "memory queue pointer {meta:?} out of range for capacity {k}"
        );
        self.entries = entries.to_device(self.entries.device())?;
        self.ptr = meta[0] as usize;
        self.len = meta[1] as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys along distinct axes so rows are recognizable after normalization.
    fn keys(ids: &[usize], dim: usize) -> Tensor {
        let mut v = vec![0f32; ids.len() * dim];
        for (r, &i) in ids.iter().enumerate() {
            v[r * dim + i] = 2.0;
        }
        Tensor::from_vec(v, (ids.len(), dim), &Device::Cpu).unwrap()
    }

    /// Which axis each valid row points along.
    fn rows(q: &Queue) -> Vec<usize> {
        match q.negatives().unwrap() {
            None => vec![],
            Some(t) => t
                .argmax(1)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
                .into_iter()
                .map(|x| x as usize)
                .collect(),
        }
    }

    #[test]
    fn ring_buffer_is_fifo() {
        let mut q = Queue::new(4, 8, &Device::Cpu).unwrap();
        assert!(q.negatives().unwrap().is_none());
        q.enqueue(&keys(&[0, 1, 2], 8)).unwrap();
        assert_eq!(rows(&q), vec![0, 1, 2]);
        // Wraps: slot 3 gets 3, slots 0 and 1 get 4 and 5 (evicting 0 and 1).
        q.enqueue(&keys(&[3, 4, 5], 8)).unwrap();
        assert_eq!(q.len(), 4);
        assert_eq!(rows(&q), vec![4, 5, 2, 3]);
        // More keys than capacity: only the newest 4 survive.
        q.enqueue(&keys(&[0, 1, 2, 3, 4, 5, 6], 8)).unwrap();
        let mut r = rows(&q);
        r.sort();
        assert_eq!(r, vec![3, 4, 5, 6]);
        // Stored rows are unit length.
        let norms = q
            .negatives()
            .unwrap()
            .unwrap()
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-6));
    }

    #[test]
    fn state_round_trip() {
        let mut q = Queue::new(3, 4, &Device::Cpu).unwrap();
        q.enqueue(&keys(&[0, 1], 4)).unwrap();
        let st = q.state("mem.").unwrap();
        let mut r = Queue::new(3, 4, &Device::Cpu).unwrap();
        r.load_state("mem.", &st).unwrap();
        assert_eq!(rows(&r), vec![0, 1]);
        q.enqueue(&keys(&[2, 3], 4)).unwrap();
        r.enqueue(&keys(&[2, 3], 4)).unwrap();
        assert_eq!(rows(&q), rows(&r));
        let mut wrong = Queue::new(5, 4, &Device::Cpu).unwrap();
        assert!(wrong.load_state("mem.", &st).is_err());
    }
}
