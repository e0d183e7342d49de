//! Losses: NT-Xent (SimCLR contrastive) and the distillation soft cross-entropy.
