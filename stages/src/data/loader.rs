//! Batches for training and evaluation: epoch shuffles, augmented or plain NCHW tensors, labels, and
//! a [`Prefetcher`] that builds the next batches on a background thread while the model trains.
//!
//! Everything here is a pure function of (seed, epoch, sample ids, view), so a batch is the same
//! whatever the thread count and whether training resumed mid-run.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{derive_seed, Images};
use crate::augment::{augment_into, sample_rng, AugmentCfg};

/// The sample order of one epoch: a permutation of `0..n` determined by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed("epoch_order", &[seed, epoch as u64]));
    order.shuffle(&mut rng);
    order
}

/// The positions (into `0..n`) of training step `step`'s full batch of `batch` in epoch `epoch`:
/// the step's slice of [`epoch_order`]. Every training kind draws its batches this way.
pub fn step_batch(n: usize, seed: u64, epoch: usize, step: usize, batch: usize) -> Vec<usize> {
    epoch_order(n, seed, epoch)[step * batch..(step + 1) * batch].to_vec()
}

/// Number of batches of `batch_size` in `n` samples; with `drop_last` an incomplete final batch is
/// dropped (contrastive training wants full batches), otherwise it is kept (evaluation wants all).
pub fn num_batches(n: usize, batch_size: usize, drop_last: bool) -> usize {
    assert!(batch_size > 0, "batch size must be positive");
    if drop_last {
        n / batch_size
    } else {
        n.div_ceil(batch_size)
    }
}

/// Augments images `ids` into `out` (`ids.len()·c·h·w` f32, NCHW), in parallel over samples. Sample
/// `ids[i]` uses the stream [`sample_rng`]`(seed, epoch, ids[i], view)`.
pub fn augment_batch_into(
    images: &Images,
    ids: &[usize],
    cfg: &AugmentCfg,
    seed: u64,
    epoch: usize,
    view: u32,
    out: &mut [f32],
) {
    let len = images.image_len();
    assert_eq!(out.len(), ids.len() * len, "output buffer size");
    out.par_chunks_mut(len)
        .zip(ids.par_iter())
        .for_each(|(dst, &id)| {
            let mut rng = sample_rng(seed, epoch, id, view);
            augment_into(
                images.image(id),
                images.h,
                images.w,
                images.c,
                cfg,
                &mut rng,
                dst,
            );
        });
}

/// Augmented images `ids` as an (N, C, H, W) f32 tensor with values in [0, 1].
pub fn augment_batch(
    images: &Images,
    ids: &[usize],
    cfg: &AugmentCfg,
    seed: u64,
    epoch: usize,
    view: u32,
    device: &Device,
) -> Result<Tensor> {
    let mut buf = vec![0f32; ids.len() * images.image_len()];
    augment_batch_into(images, ids, cfg, seed, epoch, view, &mut buf);
    Ok(Tensor::from_vec(
        buf,
        (ids.len(), images.c, images.h, images.w),
        device,
    )?)
}

/// Images `ids` unaugmented as an (N, C, H, W) f32 tensor, pixel / 255.
pub fn to_tensor(images: &Images, ids: &[usize], device: &Device) -> Result<Tensor> {
    augment_batch(images, ids, &AugmentCfg::none(), 0, 0, 0, device)
}

/// Labels of images `ids` as an (N,) u32 tensor.
pub fn labels_tensor(images: &Images, ids: &[usize], device: &Device) -> Result<Tensor> {
    let labels: Vec<u32> = ids.iter().map(|&i| images.labels[i]).collect();
    Ok(Tensor::from_vec(labels, ids.len(), device)?)
}

/// Produces items `0..n` on a background thread, at most `depth` ahead of the consumer.
///
/// Iterating yields them in order; an error ends the sequence after being yielded. Dropping the
/// prefetcher early stops the thread (its next send fails) and joins it.
pub struct Prefetcher<T: Send + 'static> {
    rx: Option<Receiver<Result<T>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl<T: Send + 'static> Prefetcher<T> {
    pub fn new(
        n: usize,
        depth: usize,
        mut make: impl FnMut(usize) -> Result<T> + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("semiflow-prefetch".into())
            .spawn(move || {
                for i in 0..n {
                    let item = make(i);
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("cannot spawn the prefetch thread");
        Prefetcher {
            rx: Some(rx),
            handle: Some(handle),
            remaining: n,
        }
    }
}

impl<T: Send + 'static> Iterator for Prefetcher<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if self.remaining == 0 {
            return None;
        }
        let item = match self.rx.as_ref()?.recv() {
            Ok(item) => item,
            // The producer died without sending: it panicked.
            Err(_) => Err(anyhow::anyhow!("the batch prefetch thread panicked")),
        };
        self.remaining = if item.is_err() { 0 } else { self.remaining - 1 };
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl<T: Send + 'static> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One batch of an epoch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// Sample ids, in batch order.
    pub ids: Vec<usize>,
    /// One (N, C, H, W) tensor per configured view.
    pub views: Vec<Tensor>,
    /// (N,) u32 labels.
    pub labels: Tensor,
}

/// What [`prefetch_epoch`] produces.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    pub images: Arc<Images>,
    /// The epoch's sample order (e.g. from [`epoch_order`], or a labeled subset shuffled).
    pub order: Vec<usize>,
    pub batch_size: usize,
    pub drop_last: bool,
    /// One augmentation per view; view v of sample i draws from `sample_rng(seed, epoch, i, v)`.
    pub views: Vec<AugmentCfg>,
    pub seed: u64,
    pub epoch: usize,
    pub device: Device,
}

impl EpochPlan {
    /// Number of batches the plan yields.
    pub fn num_batches(&self) -> usize {
        num_batches(self.order.len(), self.batch_size, self.drop_last)
    }

    /// Builds batch `b` synchronously.
    pub fn batch(&self, b: usize) -> Result<Batch> {
        let start = b * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        let ids = self.order[start..end].to_vec();
        let views = self
            .views
            .iter()
            .enumerate()
            .map(|(v, cfg)| {
                augment_batch(
                    &self.images,
                    &ids,
                    cfg,
                    self.seed,
                    self.epoch,
                    v as u32,
                    &self.device,
                )
            })
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("building batch {b} of epoch {}", self.epoch))?;
        let labels = labels_tensor(&self.images, &ids, &self.device)?;
        Ok(Batch {
            index: b,
            ids,
            views,
            labels,
        })
    }
}

/// Builds the epoch's batches on a background thread, two ahead of the consumer, so augmentation
/// overlaps training.
pub fn prefetch_epoch(plan: EpochPlan) -> Prefetcher<Batch> {
    Prefetcher::new(plan.num_batches(), 2, move |b| plan.batch(b))
}

/// Measures augmentation throughput in images per second: `n` random `h`×`w`×`c` images augmented
/// with `cfg` in batches of `batch_size` on the current rayon pool (one warm-up pass excluded).
pub fn bench_augment(
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    cfg: &AugmentCfg,
    batch_size: usize,
) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pixels: Vec<u8> = (0..n * h * w * c)
        .map(|_| rand::Rng::gen(&mut rng))
        .collect();
    let images = Images {
        n,
        h,
        w,
        c,
        pixels,
        labels: vec![0; n],
    };
    let order = epoch_order(n, 0, 0);
    let mut buf = vec![0f32; batch_size * images.image_len()];
    let mut run = |epoch: usize| {
        for ids in order.chunks(batch_size) {
            let out = &mut buf[..ids.len() * images.image_len()];
            augment_batch_into(&images, ids, cfg, 0, epoch, 0, out);
        }
    };
    run(0);
    let t = Instant::now();
    run(1);
    n as f64 / t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize) -> Images {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        Images {
            n,
            h: 32,
            w: 32,
            c: 3,
            pixels: (0..n * 32 * 32 * 3)
                .map(|_| rand::Rng::gen(&mut rng))
                .collect(),
            labels: (0..n as u32).map(|i| i % 10).collect(),
        }
    }

    fn bytes(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn epoch_order_is_a_deterministic_permutation() {
        let a = epoch_order(100, 3, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 3, 1));
        assert_ne!(a, epoch_order(100, 3, 2));
        assert_ne!(a, epoch_order(100, 4, 1));
        assert_eq!(
            (num_batches(10, 4, true), num_batches(10, 4, false)),
            (2, 3)
        );
    }

    #[test]
    fn augmentation_ignores_thread_count_and_batch_order() {
        let imgs = images(24);
        let cfg = AugmentCfg::simclr(1.0, true);
        let ids: Vec<usize> = (0..24).rev().collect();
        let in_pool = |threads: usize, ids: &[usize]| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0f32; ids.len() * imgs.image_len()];
            pool.install(|| augment_batch_into(&imgs, ids, &cfg, 7, 2, 1, &mut out));
            out
        };
        let one = in_pool(1, &ids);
        assert_eq!(one, in_pool(2, &ids));
        // Sample 5 alone gives the same pixels as inside the batch (where it sits at position 18).
        let alone = in_pool(2, &[5]);
        let len = imgs.image_len();
        assert_eq!(alone, one[18 * len..19 * len]);
    }

    #[test]
    fn tensors_have_nchw_layout_and_labels() {
        let imgs = images(5);
        let dev = Device::Cpu;
        let t = to_tensor(&imgs, &[4, 1], &dev).unwrap();
        assert_eq!(t.dims(), &[2, 3, 32, 32]);
        let v = bytes(&t);
        // Channel 1 of pixel (y=2, x=3) of image 4.
        let px = imgs.image(4)[(2 * 32 + 3) * 3 + 1];
        assert_eq!(v[32 * 32 + 2 * 32 + 3], px as f32 / 255.0);
        let l = labels_tensor(&imgs, &[4, 1], &dev).unwrap();
        assert_eq!(l.to_vec1::<u32>().unwrap(), vec![4, 1]);
    }

    #[test]
    fn prefetched_batches_match_synchronous_ones() {
        let plan = EpochPlan {
            images: Arc::new(images(10)),
            order: epoch_order(10, 1, 0),
            batch_size: 4,
            drop_last: false,
            views: vec![
                AugmentCfg::simclr(0.5, false),
                AugmentCfg::simclr(0.5, false),
            ],
            seed: 1,
            epoch: 0,
            device: Device::Cpu,
        };
        let got: Vec<Batch> = prefetch_epoch(plan.clone()).collect::<Result<_>>().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].ids.len(), 2);
        for (b, batch) in got.iter().enumerate() {
            let want = plan.batch(b).unwrap();
            assert_eq!(batch.ids, want.ids);
            assert_eq!(bytes(&batch.views[0]), bytes(&want.views[0]));
            assert_eq!(bytes(&batch.views[1]), bytes(&want.views[1]));
            assert_ne!(
                bytes(&batch.views[0]),
                bytes(&batch.views[1]),
                "views differ"
            );
            assert_eq!(
                batch.labels.to_vec1::<u32>().unwrap().len(),
                batch.ids.len()
            );
        }
        let dropped = EpochPlan {
            drop_last: true,
            ..plan
        };
        assert_eq!(prefetch_epoch(dropped).count(), 2);
    }

    #[test]
    fn prefetcher_stops_on_error_and_on_early_drop() {
        let items: Vec<Result<usize>> = Prefetcher::new(5, 2, |i| {
            if i == 2 {
                anyhow::bail!("boom at {i}")
            }
            Ok(i)
        })
        .collect();
        assert_eq!(items.len(), 3);
        assert!(items[2]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("boom at 2"));

        let mut p = Prefetcher::new(1_000_000, 2, Ok);
        assert_eq!(p.next().unwrap().unwrap(), 0);
        drop(p); // must not hang
    }
}
