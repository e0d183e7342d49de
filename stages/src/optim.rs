//! Optimizers (LARS, SGD with momentum) and learning-rate schedules.
