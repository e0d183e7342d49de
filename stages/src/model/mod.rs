//! ResNet v1 (basic/bottleneck, width multiplier, selective kernels), projection head, classifier,
//! checkpoints (safetensors + JSON architecture sidecar).
//!
//! Entry point: [`Network`]. Every conv and BatchNorm goes through [`crate::kernels`].
//! Tensor names are stable (`encoder.stem.conv1.weight`, `encoder.layer1.0.bn2.running_var`,
//! `encoder.layer3.0.shortcut.conv.weight`, `encoder.layer2.1.sk.fc1.weight`,
//! `head.1.linear.weight` (head layers count from 1, as `head_layer` does),
//! `classifier.weight`, `classifier.bias`); checkpoints, optimizers and resume rely on them.

pub mod batchnorm;
pub mod checkpoint;
pub mod config;
pub mod head;
pub mod import;
pub mod layers;
pub mod network;
pub mod params;
pub mod resnet;
pub mod sk;
pub mod torchvision;

pub use checkpoint::{read_sidecar, ClassifierInfo, Sidecar, SIDECAR_FILE, WEIGHTS_FILE};
pub use config::{ModelCfg, Stem};
pub use network::{NetShape, Network};
pub use params::Param;

#[cfg(test)]
mod tests;
