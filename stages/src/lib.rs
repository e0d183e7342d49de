//! semiflow-stages: every piece of machine learning semiflow runs, built on candle.
//!
//! This crate knows nothing of pipelines, DAGs or caches. The engine sees it only through
//! [`api`]: a registry of stage kinds, each a function of
//! (typed params with defaults, input artifact dirs, output dir, resume dir, progress) → files + metrics.

pub mod api;
pub mod augment;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod fault;
/// Conv2d and BatchNorm, the one crate every model computes them with (`kernels/`).
pub use semiflow_kernels as kernels;
pub mod kinds;
pub mod loss;
pub mod memory;
pub mod model;
pub mod numerics;
pub mod optim;

pub use api::{registry, KindSpec, Progress, RefSpec, RefTarget, RunCtx, StageOutput};
