//! k-nearest-neighbour classification of embeddings: the standard label-free check of a
//! contrastive encoder (Wu et al. 2018, as used across SimCLR/MoCo evaluations).
//!
//! Features are L2-normalized, similarity is cosine, the `k` most similar bank entries vote for
//! their class with weight exp(sim / τ), and a query's class scores are the summed votes.

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};

use super::extract;
use crate::api::RunCtx;
use crate::data::Images;
use crate::model::Network;

/// Rows of `x` (N, D) scaled to unit L2 norm (all-zero rows stay zero).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&norm)?)
}

/// kNN class scores for every query: a row-major (N_queries × num_classes) vector of summed
/// votes exp(cos / τ) over the `k` nearest bank entries.
///
/// `bank` is (M, D) with `bank_labels` (M); `queries` is (N, D); neither needs to be normalized.
/// Similarities are computed `chunk` queries at a time so memory stays at chunk × M floats.
/// Ties in similarity are broken towards the lower bank index, so results are deterministic.
pub fn knn_scores(
    bank: &Tensor,
    bank_labels: &[u32],
    queries: &Tensor,
    num_classes: usize,
    k: usize,
    temperature: f64,
    chunk: usize,
) -> Result<Vec<f32>> {
    let (m, d) = bank.dims2()?;
    let (n, dq) = queries.dims2()?;
    ensure!(d == dq, "kNN: bank has {d}-dim features, queries {dq}-dim");
    ensure!(
        bank_labels.len() == m,
        "kNN: {m} bank features but {} labels",
        bank_labels.len()
    );
    ensure!(m > 0, "kNN: empty feature bank");
    ensure!(
        k > 0 && temperature > 0.0 && chunk > 0,
        "kNN: k, temperature and chunk must be positive"
    );
    if let Some(&bad) = bank_labels.iter().find(|&&l| l as usize >= num_classes) {
        anyhow::bail!("kNN: bank label {bad} out of range for {num_classes} classes");
    }
    let k = k.min(m);
    let bank_t = l2_normalize(&bank.to_dtype(DType::F32)?)?
        .t()?
        .contiguous()?;
    let queries = l2_normalize(&queries.to_dtype(DType::F32)?)?;
    let mut scores = vec![0f32; n * num_classes];
    let mut order: Vec<u32> = Vec::with_capacity(m);
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let sims = queries
            .narrow(0, start, len)?
            .matmul(&bank_t)?
            .to_vec2::<f32>()?;
        for (r, row) in sims.iter().enumerate() {
            order.clear();
            order.extend(0..m as u32);
            // Total order: higher similarity first, then lower index.
            let cmp =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            if k < m {
                order.select_nth_unstable_by(k - 1, cmp);
            }
            let out = &mut scores[(start + r) * num_classes..][..num_classes];
            for &j in &order[..k] {
                let j = j as usize;
                out[bank_labels[j] as usize] += ((row[j] as f64) / temperature).exp() as f32;
            }
        }
    }
    Ok(scores)
}

/// kNN classification with an encoder's eval-mode features: the `eval` kind's encoder metric and
/// the pretrain kind's per-epoch monitor.
pub struct EncoderKnn {
    pub k: usize,
    /// τ of the vote weights exp(similarity / τ).
    pub temperature: f64,
    pub batch_size: usize,
}

impl EncoderKnn {
    /// (bank features, query features, per-query class scores) with `bank`'s labels voting.
    pub fn run(
        &self,
        net: &Network,
        bank: &Images,
        queries: &Images,
        num_classes: usize,
        ctx: Option<&RunCtx>,
    ) -> Result<(Tensor, Tensor, Vec<f32>)> {
        let (bank_f, _) = extract(net, bank, self.batch_size, ctx)?;
        let (query_f, _) = extract(net, queries, self.batch_size, ctx)?;
        let scores = knn_scores(
            &bank_f,
            &bank.labels,
            &query_f,
            num_classes,
            self.k,
            self.temperature,
            self.batch_size,
        )?;
        Ok((bank_f, query_f, scores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn normalize_gives_unit_rows() {
        let x = l2_normalize(&t(&[[3., 4.], [0., 0.]]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(x, [[0.6, 0.8], [0., 0.]]);
    }

    #[test]
    fn votes_are_temperature_weighted_over_the_k_nearest() {
        // Bank directions at 0°, 10°, 90°, 180°; labels 0, 1, 1, 0.
        let deg = |a: f32| [a.to_radians().cos() * 2.0, a.to_radians().sin() * 2.0];
        let bank = t(&[deg(0.), deg(10.), deg(90.), deg(180.)]);
        let labels = [0u32, 1, 1, 0];
        let q = t(&[deg(4.)]);
        let tau = 0.5;
        let s = knn_scores(&bank, &labels, &q, 2, 2, tau, 1).unwrap();
        let w = |a: f32| ((a.to_radians().cos() as f64) / tau).exp() as f32;
        assert!((s[0] - w(4.)).abs() < 1e-4, "{s:?}");
        assert!((s[1] - w(6.)).abs() < 1e-4, "{s:?}");
        // k = 3 adds the 90° neighbour to class 1; k larger than the bank uses all of it.
        let s3 = knn_scores(&bank, &labels, &q, 2, 3, tau, 1).unwrap();
        assert!((s3[1] - (w(6.) + w(86.))).abs() < 1e-4);
        let all = knn_scores(&bank, &labels, &q, 2, 99, tau, 1).unwrap();
        assert!((all[0] - (w(4.) + w(176.))).abs() < 1e-4);
    }

    #[test]
    fn chunking_does_not_change_scores() {
        let bank = t(&[[1., 0.], [0., 1.], [1., 1.], [-1., 0.5], [0.3, -1.]]);
        let labels = [0u32, 1, 2, 0, 1];
        let q = t(&[[1., 0.2], [-0.5, 1.], [0.1, -0.9]]);
        let a = knn_scores(&bank, &labels, &q, 3, 2, 0.1, 1).unwrap();
        let b = knn_scores(&bank, &labels, &q, 3, 2, 0.1, 64).unwrap();
        assert_eq!(a, b);
        assert!(knn_scores(&bank, &labels[..4], &q, 3, 2, 0.1, 1).is_err());
        assert!(knn_scores(&bank, &[0, 1, 2, 3, 0], &q, 3, 2, 0.1, 1).is_err());
    }
}
