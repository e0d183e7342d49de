//! The optimizer and schedule parameters every training kind takes, written once.
//!
//! A kind declares its own fields inside [`training_params!`], which adds the shared ones
//! ([`Training`]'s fields: `epochs`, `batch_size`, `optimizer`, `lr`, `lr_scaling`, `momentum`,
//! `weight_decay`, `warmup_epochs`, `nesterov`, `device`) to the same flat TOML table. serde's
//! `flatten` would share a struct instead, but it cannot be combined with `deny_unknown_fields`,
//! which gives the unknown-key errors (with a "did you mean"); the macro keeps both.

use crate::api::ParamError;
use crate::device::DeviceChoice;
use crate::optim::{self, Optimizer, OptimizerKind, Scaling};

use super::Schedule;

/// The shared training parameters of one node, with each kind's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Training {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Base learning rate, scaled by `lr_scaling` with the batch size.
    pub lr: f64,
    pub lr_scaling: Scaling,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Linear warmup length in epochs (fractions allowed), then cosine decay to 0.
    pub warmup_epochs: f64,
    /// Nesterov momentum (SGD only).
    pub nesterov: bool,
    /// Where to compute: "cpu" (default), "cuda" or "cuda:N" (`crate::device`). Absent from the
    /// resolved params (and so from the cache key) when "cpu".
    pub device: DeviceChoice,
}

impl Training {
    pub fn schedule(&self) -> Schedule {
        Schedule {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            lr_scaling: self.lr_scaling,
            warmup_epochs: self.warmup_epochs,
        }
    }

    /// The optimizer these parameters name.
    pub fn optimizer(&self) -> Box<dyn Optimizer + Send> {
        optim::build(
            self.optimizer,
            self.momentum,
            self.weight_decay,
            self.nesterov,
        )
    }

    /// The checks every training kind makes; `Err` names the offending key.
    pub fn check(&self) -> Result<(), ParamError> {
        super::check_schedule(&self.schedule(), self.momentum)?;
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(ParamError {
                path: "weight_decay".into(),
                message: format!("must be ≥ 0, got {}", self.weight_decay),
            });
        }
        Ok(())
    }
}

/// Defines a training kind's `Params`: its own fields (with their defaults after `=`) plus the
/// shared [`Training`] fields (defaults from the `training` expression), with
/// `#[serde(deny_unknown_fields, default)]`, `Default`, and `fn training(&self) -> Training`.
macro_rules! training_params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty = $default:expr,
            )*
        }
        training = $training:expr;
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            pub epochs: usize,
            pub batch_size: usize,
            pub optimizer: $crate::optim::OptimizerKind,
            /// Base learning rate, scaled by `lr_scaling` with the batch size.
            pub lr: f64,
            pub lr_scaling: $crate::optim::Scaling,
            pub momentum: f64,
            pub weight_decay: f64,
            /// Linear warmup length in epochs (fractions allowed), then cosine decay to 0.
            pub warmup_epochs: f64,
            /// Nesterov momentum (SGD only).
            pub nesterov: bool,
            /// Where to compute: "cpu" (default), "cuda" or "cuda:N" (`crate::device`). Absent from
            /// the resolved params (and so from the cache key) when "cpu".
            #[serde(skip_serializing_if = "crate::device::DeviceChoice::is_cpu")]
            pub device: $crate::device::DeviceChoice,
        }

        impl Default for $name {
            fn default() -> Self {
                let t: $crate::kinds::train::Training = $training;
                $name {
                    $( $field: $default, )*
                    epochs: t.epochs,
                    batch_size: t.batch_size,
                    optimizer: t.optimizer,
                    lr: t.lr,
                    lr_scaling: t.lr_scaling,
                    momentum: t.momentum,
                    weight_decay: t.weight_decay,
                    warmup_epochs: t.warmup_epochs,
                    nesterov: t.nesterov,
                    device: t.device,
                }
            }
        }

        impl $name {
            /// The shared training parameters.
            pub fn training(&self) -> $crate::kinds::train::Training {
                $crate::kinds::train::Training {
                    epochs: self.epochs,
                    batch_size: self.batch_size,
                    optimizer: self.optimizer,
                    lr: self.lr,
                    lr_scaling: self.lr_scaling,
                    momentum: self.momentum,
                    weight_decay: self.weight_decay,
                    warmup_epochs: self.warmup_epochs,
                    nesterov: self.nesterov,
                    device: self.device,
                }
            }
        }
    };
}
pub(crate) use training_params;

#[cfg(test)]
mod tests {
    use super::*;

    training_params! {
        /// A kind with one field of its own.
        pub struct Demo {
            /// Its own knob.
            pub knob: u32 = 7,
        }
        training = Training {
            epochs: 3,
            batch_size: 16,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            lr_scaling: Scaling::Linear,
            momentum: 0.9,
            weight_decay: 0.0,
            warmup_epochs: 0.0,
            nesterov: true,
            device: DeviceChoice::Cpu,
        };
    }

    #[test]
    fn shared_fields_resolve_flat_with_defaults_and_unknown_keys_fail() {
        let v = crate::api::resolve_typed::<Demo>(&serde_json::json!({"lr": 0.5})).unwrap();
        assert_eq!(v["knob"], 7);
        assert_eq!(v["lr"], 0.5);
        assert_eq!(v["epochs"], 3);
        assert!(v.get("device").is_none(), "cpu stays out of the key: {v}");
        let e = crate::api::resolve_typed::<Demo>(&serde_json::json!({"lr_sched": 1})).unwrap_err();
        assert!(e.message.contains("unknown field `lr_sched`"), "{e}");
        let d = Demo::default();
        assert_eq!(d.training().schedule().epochs, 3);
        let bad = Demo {
            weight_decay: -1.0,
            ..Demo::default()
        };
        assert_eq!(bad.training().check().unwrap_err().path, "weight_decay");
        let bad = Demo {
            momentum: 1.0,
            ..Demo::default()
        };
        assert_eq!(bad.training().check().unwrap_err().path, "momentum");
    }
}
