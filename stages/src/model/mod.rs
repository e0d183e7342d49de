//! ResNet v1 (basic/bottleneck, width multiplier, selective kernels), projection head, classifier,
//! checkpoints (safetensors + JSON architecture sidecar).
