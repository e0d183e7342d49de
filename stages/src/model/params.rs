//! Parameters and state slots of a model, the walk over them, and seeded initialization.
//!
//! Every layer exposes its tensors through [`Visit`] under a stable dotted name; optimizers,
//! checkpoints, EMA copies and resume all go through that one walk, so they cannot disagree on
//! what a model holds.

use std::sync::Mutex;

use candle_core::{Device, Result, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A trainable tensor as optimizers see it.
#[derive(Clone)]
pub struct Param {
    /// Stable dotted name, e.g. `encoder.layer1.0.conv1.weight`.
    pub name: String,
    pub var: Var,
    /// BatchNorm γ/β and biases: LARS applies neither weight decay nor trust-ratio adaptation.
    pub exclude_from_decay: bool,
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Param")
            .field("name", &self.name)
            .field("shape", self.var.shape())
            .field("exclude_from_decay", &self.exclude_from_decay)
            .finish()
    }
}

/// One named tensor of a model's state.
pub enum Slot<'a> {
    /// Trainable; `bool` = excluded from weight decay.
    Param(&'a Var, bool),
    /// Non-trainable running statistic (BatchNorm mean/variance), replaced on update.
    Stat(&'a Mutex<Tensor>),
}

impl Slot<'_> {
    /// The current value (detached).
    pub fn value(&self) -> Tensor {
        match self {
            Slot::Param(v, _) => v.as_detached_tensor(),
            Slot::Stat(m) => lock(m).clone(),
        }
    }

    /// Overwrite the value in place (shape must match).
    pub fn set(&self, t: &Tensor) -> Result<()> {
        match self {
            Slot::Param(v, _) => v.set(t),
            Slot::Stat(m) => {
                let mut cur = lock(m);
                if cur.shape() != t.shape() {
                    candle_core::bail!(
                        "running statistic shape mismatch: have {:?}, got {:?}",
                        cur.shape(),
                        t.shape()
                    );
                }
                *cur = t.detach();
                Ok(())
            }
        }
    }
}

/// Lock a running-statistics mutex; a poisoned lock only means another thread panicked mid-update
/// of a plain tensor value, which is still a valid tensor.
pub(crate) fn lock(m: &Mutex<Tensor>) -> std::sync::MutexGuard<'_, Tensor> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Anything holding named tensors.
pub trait Visit {
    /// Call `f` with every tensor under `prefix` (names are `prefix.local`), in a fixed order.
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, Slot<'a>));
}

/// `prefix.name`, or `name` when the prefix is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Fills initial weights deterministically: each tensor draws from its own ChaCha stream keyed by
/// (seed, tensor name), so the values do not depend on construction order or on candle's global RNG.
pub struct Init<'d> {
    /// `None`: every "random" tensor is zeros (a skeleton whose values are about to be loaded).
    seed: Option<u64>,
    pub device: &'d Device,
}

impl<'d> Init<'d> {
    pub fn new(seed: u64, device: &'d Device) -> Self {
        Init {
            seed: Some(seed),
            device,
        }
    }

    /// Shapes only: skips drawing random numbers for a model that is loaded right after.
    pub fn skeleton(device: &'d Device) -> Self {
        Init { seed: None, device }
    }

    fn rng(seed: u64, name: &str) -> ChaCha8Rng {
        // FNV-1a over the name, then mixed with the seed by splitmix64.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(h)))
    }

    /// Normal(0, std²) samples (Box–Muller over the tensor's own stream).
    pub fn normal(&self, name: &str, shape: impl Into<Shape>, std: f64) -> Result<Var> {
        let shape = shape.into();
        let Some(seed) = self.seed else {
            return self.constant(shape, 0.0);
        };
        let n = shape.elem_count();
        let mut rng = Self::rng(seed, name);
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            // u1 in (0, 1] so the log is finite.
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = std::f64::consts::TAU * u2;
            v.push((r * t.cos()) as f32);
            v.push((r * t.sin()) as f32);
        }
        v.truncate(n);
        Var::from_tensor(&Tensor::from_vec(v, shape, self.device)?)
    }

    pub fn constant(&self, shape: impl Into<Shape>, value: f64) -> Result<Var> {
        Var::from_tensor(&Tensor::full(value as f32, shape, self.device)?)
    }

    /// A plain (non-trainable) constant tensor, for running statistics.
    pub fn stat(&self, shape: impl Into<Shape>, value: f64) -> Result<Mutex<Tensor>> {
        Ok(Mutex::new(Tensor::full(value as f32, shape, self.device)?))
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight tensor to compute with: the Var itself in training (so gradients flow), a detached
/// view otherwise (so inference never records an autograd graph, which kept alive through
/// Var-backed weights costs 3-4 GB for ResNet-18 at b256: `eval_memory_probe` in model/tests.rs).
pub fn use_var(v: &Var, train: bool) -> Tensor {
    if train {
        v.as_tensor().clone()
    } else {
        v.as_detached_tensor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_keyed_by_seed_and_name() {
        let d = Device::Cpu;
        let a = Init::new(7, &d).normal("w", (64,), 1.0).unwrap();
        let b = Init::new(7, &d).normal("w", (64,), 1.0).unwrap();
        let c = Init::new(8, &d).normal("w", (64,), 1.0).unwrap();
        let e = Init::new(7, &d).normal("v", (64,), 1.0).unwrap();
        let v = |x: &Var| x.as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c));
        assert_ne!(v(&a), v(&e));
    }

    #[test]
    fn normal_has_requested_moments() {
        let d = Device::Cpu;
        let w = Init::new(1, &d).normal("w", (20_000,), 0.5).unwrap();
        let x = w.as_tensor().to_vec1::<f32>().unwrap();
        let mean = x.iter().map(|&a| a as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "std {}", var.sqrt());
    }
}
