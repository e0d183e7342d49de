//! The learning rate over training: batch-size scaling and warmup + cosine decay.

use serde::{Deserialize, Serialize};

/// How the base learning rate grows with the batch size (SimCLR appendix B.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// lr · B / 256.
    Linear,
    /// lr · √B.
    Sqrt,
}

impl Scaling {
    pub fn scale(self, base_lr: f64, batch_size: usize) -> f64 {
        match self {
            Scaling::Linear => base_lr * batch_size as f64 / 256.0,
            Scaling::Sqrt => base_lr * (batch_size as f64).sqrt(),
        }
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warmup from 0 to `peak_lr` over
/// `warmup_steps`, then cosine decay to 0 at `total_steps` (the reference's WarmUpAndCosineDecay).
pub fn lr_at(step: usize, total_steps: usize, warmup_steps: usize, peak_lr: f64) -> f64 {
    if step < warmup_steps {
        return peak_lr * step as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps);
    if decay_steps == 0 {
        return peak_lr;
    }
    let progress = ((step - warmup_steps) as f64 / decay_steps as f64).min(1.0);
    peak_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_endpoints() {
        let peak = 2.0;
        assert_eq!(lr_at(0, 100, 10, peak), 0.0);
        assert!((lr_at(5, 100, 10, peak) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, peak) - peak).abs() < 1e-12);
        assert!(
            (lr_at(55, 100, 10, peak) - 1.0).abs() < 1e-12,
            "half-way through the decay"
        );
        assert!(lr_at(100, 100, 10, peak).abs() < 1e-12);
        assert!(
            (lr_at(0, 100, 0, peak) - peak).abs() < 1e-12,
            "no warmup starts at the peak"
        );
        let mut prev = f64::INFINITY;
        for s in 10..=100 {
            let lr = lr_at(s, 100, 10, peak);
            assert!(lr <= prev);
            prev = lr;
        }
    }

    #[test]
    fn lr_scaling() {
        assert!((Scaling::Linear.scale(0.3, 512) - 0.6).abs() < 1e-12);
        assert!((Scaling::Sqrt.scale(0.075, 4096) - 4.8).abs() < 1e-12);
    }
}
