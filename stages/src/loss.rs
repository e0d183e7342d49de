//! Losses: NT-Xent (SimCLR contrastive, optionally with extra negatives from a memory queue),
//! the distillation soft cross-entropy, and plain cross-entropy.
//!
//! All functions are dtype-generic (f32 in training, f64 in the gradient checks) and build only
//! candle ops, so autograd differentiates them.

use candle_core::{DType, Device, Result, Tensor, D};

/// What masks an anchor's similarity with itself: exp(-1e9) is exactly 0 in f32 and f64, so the
/// entry drops out of the softmax and gets zero gradient (the reference uses the same constant).
const SELF_MASK: f64 = -1e9;

/// Row-wise L2 normalization, `x / max(‖x‖, 1e-6)` (as `tf.math.l2_normalize` with its 1e-12 floor
/// on the squared norm).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.maximum(1e-12)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// SimCLR NT-Xent over two views `z1`, `z2` (N×D each, not necessarily normalized).
///
/// The 2N projections are L2-normalized; each anchor is scored against its positive (the other
/// view of the same image) and the 2N−2 other projections by cosine similarity / `temperature`,
/// its self-similarity masked out; the loss is the mean cross-entropy over all 2N anchors.
/// Returns `(loss, contrastive_acc)`: the accuracy is the fraction of anchors whose positive has
/// the highest logit.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<(Tensor, f64)> {
    nt_xent_with_memory(z1, z2, None, temperature)
}

/// [`nt_xent`] with `K` extra negatives per anchor from a memory queue (K×D, already
/// L2-normalized, treated as constants): each anchor then has 2N−2+K negatives.
pub fn nt_xent_with_memory(
    z1: &Tensor,
    z2: &Tensor,
    queue: Option<&Tensor>,
    temperature: f64,
) -> Result<(Tensor, f64)> {
    let (logits, labels) = contrastive_logits(z1, z2, queue, temperature)?;
    let loss = cross_entropy(&logits, &labels)?;
    let acc = accuracy(&logits, &labels)?;
    Ok((loss, acc))
}

/// The (2N, 2N+K) logit matrix and the index of each anchor's positive.
///
/// Row `i` holds anchor `i`'s similarity with all 2N projections (its own entry masked) followed by
/// its similarity with the K queue entries; anchors `0..N` are view 1, `N..2N` view 2, so the
/// positive of anchor `i` is `(i + N) mod 2N`.
pub(crate) fn contrastive_logits(
    z1: &Tensor,
    z2: &Tensor,
    queue: Option<&Tensor>,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let (n, d) = z1.dims2()?;
    if z2.dims2()? != (n, d) {
        candle_core::bail!(
            "nt_xent: views have different shapes {:?} and {:?}",
            z1.shape(),
            z2.shape()
        );
    }
    if temperature.is_nan() || temperature <= 0.0 {
        candle_core::bail!("nt_xent: temperature must be positive, got {temperature}");
    }
    let z = l2_normalize(&Tensor::cat(&[z1, z2], 0)?)?;
    let inv_t = 1.0 / temperature;
    let sim = (z.matmul(&z.t()?)? * inv_t)?;
    let mask = (Tensor::eye(2 * n, z.dtype(), z.device())? * SELF_MASK)?;
    let mut logits = (sim + mask)?;
    if let Some(q) = queue {
        let (_, qd) = q.dims2()?;
        if qd != d {
            candle_core::bail!("nt_xent: memory queue has dim {qd}, projections have {d}");
        }
        let q = q.detach().to_dtype(z.dtype())?;
        let neg = (z.matmul(&q.t()?)? * inv_t)?;
        logits = Tensor::cat(&[&logits, &neg], 1)?;
    }
    let labels: Vec<u32> = (0..2 * n).map(|i| ((i + n) % (2 * n)) as u32).collect();
    let labels = Tensor::from_vec(labels, 2 * n, z.device())?;
    Ok((logits, labels))
}

/// Mean cross-entropy of `logits` (N×C) against integer class `labels` (N, u32).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, labels)
}

/// Fraction of rows whose arg-max equals the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let pred = logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
    let labels = labels.to_vec1::<u32>()?;
    if pred.is_empty() {
        return Ok(0.0);
    }
    let hits = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    Ok(hits as f64 / pred.len() as f64)
}

/// Distillation loss: −Σ_y softmax(teacher/τ)·log_softmax(student/τ), averaged over the batch and
/// multiplied by τ² so gradient magnitudes do not shrink as τ grows (Hinton et al. 2015; the
/// SimCLRv2 paper writes the loss without the factor, which only matters for τ ≠ 1). The teacher
/// is detached: no gradient flows into it.
pub fn soft_cross_entropy(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    if temperature.is_nan() || temperature <= 0.0 {
        candle_core::bail!("soft_cross_entropy: temperature must be positive, got {temperature}");
    }
    if student_logits.dims() != teacher_logits.dims() {
        candle_core::bail!(
            "soft_cross_entropy: student logits {:?} vs teacher logits {:?}",
            student_logits.shape(),
            teacher_logits.shape()
        );
    }
    let inv_t = 1.0 / temperature;
    let target = candle_nn::ops::softmax(&(teacher_logits.detach() * inv_t)?, D::Minus1)?;
    let log_p = candle_nn::ops::log_softmax(&(student_logits * inv_t)?, D::Minus1)?;
    let per_example = (target * log_p)?.sum(D::Minus1)?;
    per_example.mean_all()?.neg()? * (temperature * temperature)
}

/// A scalar loss tensor as f64 (for logging and the non-finite check).
pub fn scalar(loss: &Tensor) -> Result<f64> {
    loss.to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
    }

    /// Worked by hand (τ = 0.5, so logits are 2·cos):
    /// z1 = [(2,0), (0,1)] → a = e1, b = e2; z2 = [(3,1), (0,3)] → c = (3,1)/√10, d = e2.
    /// Cosines: a·c = p = 0.948683, b·c = c·d = q = 0.316228, b·d = 1, a·b = a·d = 0.
    /// With P = 2p = 1.897367, Q = 2q = 0.632456:
    ///   anchor a (positive c): −P + ln(1 + e^P + 1)          = 0.262308
    ///   anchor b (positive d): −2 + ln(1 + e^Q + e²)         = 0.329352
    ///   anchor c (positive a): −P + ln(e^P + e^Q + e^Q)      = 0.447585
    ///   anchor d (positive b): −2 + ln(1 + e² + e^Q)         = 0.329352
    /// mean = 0.342149; every positive has the highest logit, so accuracy = 1.
    #[test]
    fn nt_xent_matches_hand_computation() {
        let z1 = t2(&[[2.0, 0.0], [0.0, 1.0]]);
        let z2 = t2(&[[3.0, 1.0], [0.0, 3.0]]);
        let (loss, acc) = nt_xent(&z1, &z2, 0.5).unwrap();
        let loss = scalar(&loss).unwrap();
        assert!((loss - 0.342149).abs() < 2e-5, "loss {loss}");
        assert_eq!(acc, 1.0);
    }

    /// Views swapped so each anchor's positive is orthogonal to it: anchor e1 (τ = 1) sees logits
    /// [masked, 0, 0 (positive), 1], so loss = ln(2 + e) = 1.551445 for all four anchors and no
    /// positive wins.
    #[test]
    fn nt_xent_orthogonal_positives() {
        let z1 = t2(&[[1.0, 0.0], [0.0, 1.0]]);
        let z2 = t2(&[[0.0, 1.0], [1.0, 0.0]]);
        let (loss, acc) = nt_xent(&z1, &z2, 1.0).unwrap();
        let loss = scalar(&loss).unwrap();
        assert!(
            (loss - (2.0 + std::f64::consts::E).ln()).abs() < 1e-9,
            "loss {loss}"
        );
        assert_eq!(acc, 0.0);
    }

    /// Straightforward per-anchor loop: the oracle for the memory variant.
    fn naive_nt_xent(z1: &[Vec<f64>], z2: &[Vec<f64>], queue: &[Vec<f64>], t: f64) -> f64 {
        let norm = |v: &Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<f64>>()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let z: Vec<Vec<f64>> = z1.iter().chain(z2).map(norm).collect();
        let n = z1.len();
        let mut total = 0.0;
        for i in 0..2 * n {
            let pos = (i + n) % (2 * n);
            let mut negatives = Vec::new();
            for (j, zj) in z.iter().enumerate() {
                if j != i && j != pos {
                    negatives.push(dot(&z[i], zj) / t);
                }
            }
            for q in queue {
                negatives.push(dot(&z[i], q) / t);
            }
            assert_eq!(negatives.len(), 2 * n - 2 + queue.len());
            let lp = dot(&z[i], &z[pos]) / t;
            let denom = lp.exp() + negatives.iter().map(|x| x.exp()).sum::<f64>();
            total += denom.ln() - lp;
        }
        total / (2 * n) as f64
    }

    fn rand_rows(rows: usize, cols: usize, seed: u64) -> Vec<Vec<f64>> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..rows)
            .map(|_| (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect())
            .collect()
    }

    fn to_tensor(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    }

    #[test]
    fn memory_adds_k_negatives_per_anchor() {
        let (n, d, k) = (3, 5, 4);
        let z1 = rand_rows(n, d, 1);
        let z2 = rand_rows(n, d, 2);
        let queue: Vec<Vec<f64>> = rand_rows(k, d, 3)
            .into_iter()
            .map(|v| {
                let l = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.into_iter().map(|x| x / l).collect()
            })
            .collect();
        let q = to_tensor(&queue);
        let (logits, _) =
            contrastive_logits(&to_tensor(&z1), &to_tensor(&z2), Some(&q), 0.2).unwrap();
        assert_eq!(logits.dims(), &[2 * n, 2 * n + k]);
        let (loss, _) =
            nt_xent_with_memory(&to_tensor(&z1), &to_tensor(&z2), Some(&q), 0.2).unwrap();
        let expect = naive_nt_xent(&z1, &z2, &queue, 0.2);
        assert!((scalar(&loss).unwrap() - expect).abs() < 1e-10);
        let (plain, _) = nt_xent(&to_tensor(&z1), &to_tensor(&z2), 0.2).unwrap();
        let expect_plain = naive_nt_xent(&z1, &z2, &[], 0.2);
        assert!((scalar(&plain).unwrap() - expect_plain).abs() < 1e-10);
        assert!(
            expect > expect_plain,
            "extra negatives can only raise the loss"
        );
    }

    /// Central differences in f64 against candle's autograd, for every input coordinate.
    #[test]
    fn nt_xent_gradient_matches_finite_differences() {
        let (n, d, t) = (3, 4, 0.3);
        let a = rand_rows(n, d, 11);
        let b = rand_rows(n, d, 12);
        let v1 = candle_core::Var::from_tensor(&to_tensor(&a)).unwrap();
        let v2 = candle_core::Var::from_tensor(&to_tensor(&b)).unwrap();
        let (loss, _) = nt_xent(v1.as_tensor(), v2.as_tensor(), t).unwrap();
        let grads = loss.backward().unwrap();
        let g1 = grads.get(v1.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        let g2 = grads.get(v2.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        let eval = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            let (l, _) = nt_xent(&to_tensor(a), &to_tensor(b), t).unwrap();
            scalar(&l).unwrap()
        };
        let h = 1e-6;
        for view in 0..2 {
            for i in 0..n {
                for j in 0..d {
                    let (mut ap, mut bp) = (a.clone(), b.clone());
                    let (mut am, mut bm) = (a.clone(), b.clone());
                    if view == 0 {
                        ap[i][j] += h;
                        am[i][j] -= h;
                    } else {
                        bp[i][j] += h;
                        bm[i][j] -= h;
                    }
                    let numeric = (eval(&ap, &bp) - eval(&am, &bm)) / (2.0 * h);
                    let analytic = if view == 0 { g1[i][j] } else { g2[i][j] };
                    assert!(
                        (numeric - analytic).abs() < 1e-7 * (1.0 + analytic.abs()),
                        "view {view} [{i}][{j}]: numeric {numeric} vs autograd {analytic}"
                    );
                }
            }
        }
    }

    /// Teacher (2, 0), student (0, 0), τ = 2: p = softmax(1, 0) = (0.731059, 0.268941),
    /// log q = ln(½) for both classes, so loss = τ²·ln 2 = 2.772589; identical logits give τ²·H(p).
    #[test]
    fn soft_cross_entropy_hand_example() {
        let teacher = t2(&[[2.0, 0.0]]);
        let student = t2(&[[0.0, 0.0]]);
        let l = scalar(&soft_cross_entropy(&student, &teacher, 2.0).unwrap()).unwrap();
        assert!((l - 4.0 * 2f64.ln()).abs() < 1e-12, "{l}");
        let p: f64 = 1.0 / (1.0 + (-1f64).exp());
        let entropy = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
        let same = scalar(&soft_cross_entropy(&teacher, &teacher, 2.0).unwrap()).unwrap();
        assert!((same - 4.0 * entropy).abs() < 1e-12, "{same}");
    }

    #[test]
    fn soft_cross_entropy_does_not_reach_the_teacher() {
        let s = candle_core::Var::from_tensor(&t2(&[[0.5, -1.0]])).unwrap();
        let te = candle_core::Var::from_tensor(&t2(&[[1.0, 0.0]])).unwrap();
        let loss = soft_cross_entropy(s.as_tensor(), te.as_tensor(), 1.0).unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(s.as_tensor()).is_some());
        assert!(grads.get(te.as_tensor()).is_none());
    }

    #[test]
    fn cross_entropy_and_accuracy() {
        let logits = t2(&[[0.0, 0.0], [3.0, 1.0]]);
        let labels = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let l = scalar(&cross_entropy(&logits, &labels).unwrap()).unwrap();
        let expect = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
        assert!((l - expect).abs() < 1e-12);
        assert_eq!(accuracy(&logits, &labels).unwrap(), 0.5);
    }
}
