//! Accuracy statistics from per-sample class scores.

use anyhow::{ensure, Result};

/// Per-sample class scores (logits or kNN votes) with the true labels, and the accuracy
/// statistics derived from them. Predictions are the arg-max with ties going to the lower class.
pub struct ClassScores<'a> {
    scores: &'a [f32],
    labels: &'a [u32],
    num_classes: usize,
}

impl<'a> ClassScores<'a> {
    /// `scores` is row-major (labels.len() × num_classes).
    pub fn new(scores: &'a [f32], labels: &'a [u32], num_classes: usize) -> Result<Self> {
        ensure!(num_classes > 0, "no classes");
        ensure!(
            scores.len() == labels.len() * num_classes,
            "{} scores for {} samples × {num_classes} classes",
            scores.len(),
            labels.len()
        );
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
            anyhow::bail!("label {bad} out of range for {num_classes} classes");
        }
        Ok(ClassScores {
            scores,
            labels,
            num_classes,
        })
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.scores[i * self.num_classes..][..self.num_classes]
    }

    /// 0-based rank of the true class in sample `i`'s ordering (score desc, class asc).
    /// NaN scores rank below everything.
    fn rank(&self, i: usize) -> usize {
        let row = self.row(i);
        let y = self.labels[i] as usize;
        let key = |c: usize| {
            if row[c].is_nan() {
                f32::NEG_INFINITY
            } else {
                row[c]
            }
        };
        (0..self.num_classes)
            .filter(|&c| key(c) > key(y) || (key(c) == key(y) && c < y))
            .count()
    }

    pub fn predicted(&self, i: usize) -> usize {
        let row = self.row(i);
        let mut best = 0;
        for c in 1..self.num_classes {
            if row[c] > row[best] || row[best].is_nan() && !row[c].is_nan() {
                best = c;
            }
        }
        best
    }

    /// Fraction of samples whose true class is among the `k` highest scores (k capped at the
    /// number of classes).
    pub fn topk_accuracy(&self, k: usize) -> f64 {
        let n = self.labels.len();
        if n == 0 {
            return f64::NAN;
        }
        (0..n).filter(|&i| self.rank(i) < k).count() as f64 / n as f64
    }

    /// counts[true][predicted].
    pub fn confusion(&self) -> Vec<Vec<u64>> {
        let mut m = vec![vec![0u64; self.num_classes]; self.num_classes];
        for i in 0..self.labels.len() {
            m[self.labels[i] as usize][self.predicted(i)] += 1;
        }
        m
    }

    /// Top-1 accuracy per true class; `None` for classes absent from the split.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion()
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f64 / total as f64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_scores_metrics() {
        // 4 samples, 3 classes.
        let scores = [
            0.9, 0.1, 0.0, // label 0: rank 0
            0.5, 0.2, 0.3, // label 1: rank 2
            0.2, 0.2, 0.1, // label 1: tie with class 0 → rank 1, predicted 0
            0.0, 0.0, 1.0, // label 2: rank 0
        ];
        let labels = [0u32, 1, 1, 2];
        let s = ClassScores::new(&scores, &labels, 3).unwrap();
        assert_eq!(s.topk_accuracy(1), 0.5);
        assert_eq!(s.topk_accuracy(2), 0.75);
        assert_eq!(s.topk_accuracy(5), 1.0);
        assert_eq!(s.confusion(), [[1, 0, 0], [2, 0, 0], [0, 0, 1]]);
        assert_eq!(s.per_class_accuracy(), [Some(1.0), Some(0.0), Some(1.0)]);
        assert!(ClassScores::new(&scores, &[0, 1, 1, 3], 3).is_err());
        assert!(ClassScores::new(&scores[1..], &labels, 3).is_err());
    }
}
