//! SimCLRv2's MoCo-style memory: a queue of negatives produced by an EMA copy of encoder + head.
