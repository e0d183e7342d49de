//! LARS and SGD with momentum: their update rules on the CPU's f32 slices (in place, chunked so
//! sums combine in the same order on any thread count) and in candle ops elsewhere, and their
//! momentum buffers.

use std::collections::HashMap;

use anyhow::Context as _;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::{Optimizer, Param};

/// LARS (You et al. 2017) as in the SimCLR reference (`lars_optimizer.py`, classic momentum,
/// no Nesterov): for a regular parameter
///   g' = g + wd·w;  trust = η·‖w‖/‖g'‖ (1 if either norm is 0);  v = m·v + lr·trust·g';  w -= v.
/// Parameters with `exclude_from_decay` (BatchNorm γ/β, biases) get neither weight decay nor
/// trust-ratio adaptation: v = m·v + lr·g. Parameters under a prefix in `no_adaptation` keep
/// weight decay but skip the trust ratio.
#[derive(Debug)]
pub struct Lars {
    pub momentum: f64,
    /// Trust coefficient η.
    pub eta: f64,
    pub weight_decay: f64,
    /// Name prefixes updated without trust-ratio adaptation. By default the classifier
    /// (`classifier.`), as the reference does for `head_supervised` (tf2/model.py
    /// `build_optimizer`, which re-adds its weight decay as an L2 loss): the zero-initialized
    /// classifier's trust ratio η·‖w‖/‖g‖ would otherwise shrink its steps to almost nothing.
    pub no_adaptation: Vec<String>,
    buffers: Buffers,
}

impl Lars {
    pub const DEFAULT_ETA: f64 = 0.001;

    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Lars {
            momentum,
            eta: Self::DEFAULT_ETA,
            weight_decay,
            no_adaptation: vec!["classifier.".to_string()],
            buffers: Buffers::default(),
        }
    }
}

/// SGD with (optionally Nesterov) momentum and L2 weight decay, PyTorch convention:
///   g' = g + wd·w;  v = m·v + g';  w -= lr·(g' + m·v) if Nesterov else lr·v.
/// `exclude_from_decay` parameters get no weight decay.
#[derive(Debug)]
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    buffers: Buffers,
}

impl Sgd {
    pub fn new(momentum: f64, weight_decay: f64, nesterov: bool) -> Self {
        Sgd {
            momentum,
            weight_decay,
            nesterov,
            buffers: Buffers::default(),
        }
    }
}

/// Momentum buffers, created zero on a parameter's first update.
#[derive(Debug, Default)]
struct Buffers(HashMap<String, Buffer>);

#[derive(Debug)]
enum Buffer {
    /// CPU parameters: updated in place without allocating.
    Host(Vec<f32>),
    /// Other devices: a tensor on the parameter's device.
    Device(Tensor),
}

impl Buffers {
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .0
            .iter()
            .map(|(name, b)| {
                let t = match b {
                    Buffer::Host(v) => Tensor::from_slice(v, v.len(), &Device::Cpu)
                        .expect("a Vec<f32> always makes a CPU tensor"),
                    Buffer::Device(t) => t.clone(),
                };
                (name.clone(), t)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn load(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        let mut map = HashMap::with_capacity(state.len());
        for (name, t) in state {
            let t = t.to_dtype(DType::F32)?.flatten_all()?;
            let b = if t.device().is_cpu() {
                Buffer::Host(t.to_vec1::<f32>()?)
            } else {
                Buffer::Device(t)
            };
            map.insert(name.clone(), b);
        }
        self.0 = map;
        Ok(())
    }
}

/// The per-parameter update rule, shared by the host and device paths.
#[derive(Debug, Clone, Copy)]
struct Rule {
    momentum: f32,
    weight_decay: f32,
    /// LARS: scale lr by the trust ratio η·‖w‖/‖g'‖.
    trust_eta: Option<f64>,
    /// LARS folds lr into the momentum buffer (classic momentum); SGD applies it after.
    lr_in_momentum: bool,
    nesterov: bool,
}

impl Optimizer for Lars {
    fn step(&mut self, params: &[Param], grads: &GradStore, lr: f64) -> anyhow::Result<()> {
        for p in params {
            let rule = Rule {
                momentum: self.momentum as f32,
                weight_decay: if p.exclude_from_decay {
                    0.0
                } else {
                    self.weight_decay as f32
                },
                trust_eta: (!p.exclude_from_decay
                    && !self.no_adaptation.iter().any(|pre| p.name.starts_with(pre)))
                .then_some(self.eta),
                lr_in_momentum: true,
                nesterov: false,
            };
            update(&mut self.buffers, p, grads, lr, rule)?;
        }
        Ok(())
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers.state()
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        self.buffers.load(state)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[Param], grads: &GradStore, lr: f64) -> anyhow::Result<()> {
        for p in params {
            let rule = Rule {
                momentum: self.momentum as f32,
                weight_decay: if p.exclude_from_decay {
                    0.0
                } else {
                    self.weight_decay as f32
                },
                trust_eta: None,
                lr_in_momentum: false,
                nesterov: self.nesterov,
            };
            update(&mut self.buffers, p, grads, lr, rule)?;
        }
        Ok(())
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers.state()
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) -> anyhow::Result<()> {
        self.buffers.load(state)
    }
}

/// Elements per rayon task: fixed, so sums are combined in the same order on any thread count.
const CHUNK: usize = 1 << 15;

fn update(
    buffers: &mut Buffers,
    p: &Param,
    grads: &GradStore,
    lr: f64,
    rule: Rule,
) -> anyhow::Result<()> {
    let Some(grad) = grads.get(p.var.as_tensor()) else {
        return Ok(());
    };
    let w = p.var.as_tensor();
    if w.dtype() != DType::F32 {
        anyhow::bail!(
            "optimizer: parameter {} is {:?}, expected f32",
            p.name,
            w.dtype()
        );
    }
    if w.device().is_cpu() {
        update_host(buffers, p, grad, lr, rule)
    } else {
        update_device(buffers, p, grad, lr, rule)
    }
    .with_context(|| format!("optimizer step for parameter {}", p.name))
}

/// Read a contiguous CPU f32 tensor's values (no copy when it is already contiguous).
fn with_host_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> anyhow::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        anyhow::bail!("expected a CPU tensor");
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(f(&data[start..end])),
        None => {
            drop(storage);
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            Ok(f(&v))
        }
    }
}

fn sum_sq(xs: &[f32]) -> f64 {
    let partial: Vec<f64> = xs
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    partial.iter().sum()
}

fn update_host(
    buffers: &mut Buffers,
    p: &Param,
    grad: &Tensor,
    lr: f64,
    rule: Rule,
) -> anyhow::Result<()> {
    let w_t = p.var.as_tensor();
    let n = w_t.elem_count();
    if grad.elem_count() != n {
        anyhow::bail!(
            "gradient has {} elements, parameter {}",
            grad.elem_count(),
            n
        );
    }
    let grad = grad.to_dtype(DType::F32)?;
    let buf = buffers
        .0
        .entry(p.name.clone())
        .or_insert_with(|| Buffer::Host(vec![0.0; n]));
    let Buffer::Host(v) = buf else {
        anyhow::bail!("momentum buffer lives on another device");
    };
    if v.len() != n {
        anyhow::bail!("momentum buffer has {} elements, parameter {}", v.len(), n);
    }
    let new_w = with_host_slice(w_t, |w| {
        with_host_slice(&grad, |g| {
            let wd = rule.weight_decay;
            // g' = g + wd·w, formed on the fly (never stored).
            let trust = match rule.trust_eta {
                Some(eta) => {
                    let w_norm = sum_sq(w).sqrt();
                    let gd_sq: f64 = w
                        .par_chunks(CHUNK)
                        .zip(g.par_chunks(CHUNK))
                        .map(|(wc, gc)| {
                            wc.iter()
                                .zip(gc)
                                .map(|(&wi, &gi)| {
                                    let x = (gi + wd * wi) as f64;
                                    x * x
                                })
                                .sum::<f64>()
                        })
                        .collect::<Vec<f64>>()
                        .iter()
                        .sum();
                    let g_norm = gd_sq.sqrt();
                    if w_norm > 0.0 && g_norm > 0.0 {
                        eta * w_norm / g_norm
                    } else {
                        1.0
                    }
                }
                None => 1.0,
            };
            let scaled = (lr * trust) as f32;
            let lr = lr as f32;
            let m = rule.momentum;
            let mut out = vec![0f32; n];
            out.par_chunks_mut(CHUNK)
                .zip(v.par_chunks_mut(CHUNK))
                .zip(w.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|((oc, vc), (wc, gc))| {
                    for i in 0..oc.len() {
                        let gd = gc[i] + wd * wc[i];
                        if rule.lr_in_momentum {
                            vc[i] = m * vc[i] + scaled * gd;
                            oc[i] = wc[i] - vc[i];
                        } else {
                            vc[i] = m * vc[i] + gd;
                            let step = if rule.nesterov { gd + m * vc[i] } else { vc[i] };
                            oc[i] = wc[i] - lr * step;
                        }
                    }
                });
            out
        })
    })??;
    let new_w = Tensor::from_vec(new_w, w_t.shape(), w_t.device())?;
    p.var.set(&new_w)?;
    Ok(())
}

fn update_device(
    buffers: &mut Buffers,
    p: &Param,
    grad: &Tensor,
    lr: f64,
    rule: Rule,
) -> anyhow::Result<()> {
    let w = p.var.as_tensor().detach();
    let g = grad.to_dtype(DType::F32)?.reshape(w.shape())?;
    let gd = if rule.weight_decay != 0.0 {
        (&g + (&w * rule.weight_decay as f64)?)?
    } else {
        g
    };
    let v_prev = match buffers.0.remove(&p.name) {
        Some(Buffer::Device(t)) => t.reshape(w.shape())?,
        Some(Buffer::Host(h)) => Tensor::from_vec(h, w.shape(), w.device())?,
        None => w.zeros_like()?,
    };
    let m = rule.momentum as f64;
    let new_w;
    let v;
    if rule.lr_in_momentum {
        let trust = match rule.trust_eta {
            Some(eta) => {
                let w_norm = w
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    .sqrt();
                let g_norm = gd
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    .sqrt();
                if w_norm > 0.0 && g_norm > 0.0 {
                    eta * w_norm / g_norm
                } else {
                    1.0
                }
            }
            None => 1.0,
        };
        v = ((&v_prev * m)? + (&gd * (lr * trust))?)?;
        new_w = (&w - &v)?;
    } else {
        v = ((&v_prev * m)? + &gd)?;
        let step = if rule.nesterov {
            (&gd + (&v * m)?)?
        } else {
            v.clone()
        };
        new_w = (&w - (step * lr)?)?;
    }
    p.var.set(&new_w)?;
    buffers.0.insert(p.name.clone(), Buffer::Device(v));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn param(name: &str, values: &[f32], exclude: bool) -> Param {
        Param {
            name: name.into(),
            var: Var::from_slice(values, values.len(), &Device::Cpu).unwrap(),
            exclude_from_decay: exclude,
        }
    }

    /// Gradients of loss = Σ c_i·w_i are exactly c.
    fn grads_for(params: &[Param], coeffs: &[&[f32]]) -> GradStore {
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (p, c) in params.iter().zip(coeffs) {
            let c = Tensor::from_slice(c, c.len(), &Device::Cpu).unwrap();
            loss = (loss + (p.var.as_tensor() * c).unwrap().sum_all().unwrap()).unwrap();
        }
        loss.backward().unwrap()
    }

    fn values(p: &Param) -> Vec<f32> {
        p.var.as_tensor().to_vec1::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!(
                (*x as f64 - y).abs() < 1e-6 * (1.0 + y.abs()),
                "{a:?} vs {b:?}"
            );
        }
    }

    /// Worked by hand: lr = 0.5, wd = 0.1, η = 0.001, m = 0.9.
    /// Regular w = (3, 4), g = (0.7, -0.4): g' = g + 0.1·w = (1.0, 0.0); ‖w‖ = 5, ‖g'‖ = 1;
    ///   trust = 0.001·5/1 = 0.005; v = 0.5·0.005·g' = (0.0025, 0); w = (2.9975, 4).
    /// Excluded w = (1, 2), g = (0.2, -0.6): v = 0.5·g = (0.1, -0.3); w = (0.9, 2.3).
    /// Step 2 with the same gradients: regular w = (2.9975, 4), g' = (0.99975, 0),
    ///   ‖w‖ = 4.9985, trust = 0.001·4.9985/0.99975 = 0.00499975, v = 0.9·0.0025 +
    ///   0.5·0.00499975·0.99975 = 0.0047492... → w₀ = 2.9975 − 0.00474925.
    ///   Excluded: v = 0.9·(0.1, −0.3) + 0.5·(0.2, −0.6) = (0.19, −0.57); w = (0.71, 2.87).
    #[test]
    fn lars_two_steps_by_hand() {
        let params = vec![
            param("conv.weight", &[3.0, 4.0], false),
            param("bn.gamma", &[1.0, 2.0], true),
        ];
        let mut opt = Lars::new(0.9, 0.1);
        let coeffs: [&[f32]; 2] = [&[0.7, -0.4], &[0.2, -0.6]];
        opt.step(&params, &grads_for(&params, &coeffs), 0.5)
            .unwrap();
        close(&values(&params[0]), &[2.9975, 4.0]);
        close(&values(&params[1]), &[0.9, 2.3]);

        opt.step(&params, &grads_for(&params, &coeffs), 0.5)
            .unwrap();
        let gd0 = 0.7 + 0.1 * 2.9975;
        let w_norm = (2.9975f64.powi(2) + 16.0).sqrt();
        let g_norm = (gd0 * gd0 + (-0.4f64 + 0.4).powi(2)).sqrt();
        let trust = 0.001 * w_norm / g_norm;
        let v0 = 0.9 * 0.0025 + 0.5 * trust * gd0;
        close(&values(&params[0]), &[2.9975 - v0, 4.0]);
        close(&values(&params[1]), &[0.71, 2.87]);
    }

    /// w = (1, -2), g = (0.5, 0.5), lr 0.1, m 0.9, wd 0.01:
    /// g' = (0.51, 0.48); v = g'; plain: w = (0.949, -2.048).
    /// Nesterov: step = g' + 0.9·v = 1.9·g' = (0.969, 0.912); w = (0.9031, -2.0912).
    /// Second plain step: g' = (0.5 + 0.00949, 0.5 − 0.02048) = (0.50949, 0.47952);
    ///   v = 0.9·(0.51, 0.48) + g' = (0.96849, 0.91152); w = (0.949 − 0.096849, −2.048 − 0.091152).
    #[test]
    fn sgd_plain_and_nesterov() {
        let coeffs: [&[f32]; 1] = [&[0.5, 0.5]];
        let p = vec![param("w", &[1.0, -2.0], false)];
        let mut opt = Sgd::new(0.9, 0.01, false);
        opt.step(&p, &grads_for(&p, &coeffs), 0.1).unwrap();
        close(&values(&p[0]), &[0.949, -2.048]);
        opt.step(&p, &grads_for(&p, &coeffs), 0.1).unwrap();
        close(&values(&p[0]), &[0.949 - 0.096849, -2.048 - 0.091152]);

        let p = vec![param("w", &[1.0, -2.0], false)];
        let mut opt = Sgd::new(0.9, 0.01, true);
        opt.step(&p, &grads_for(&p, &coeffs), 0.1).unwrap();
        close(&values(&p[0]), &[0.9031, -2.0912]);
    }

    /// The classifier keeps weight decay but skips the trust ratio: w = (1, 2), g = (0.5, 0),
    /// wd = 0.1, lr = 0.2: g' = (0.6, 0.2), v = 0.2·g' = (0.12, 0.04), w = (0.88, 1.96).
    #[test]
    fn classifier_skips_adaptation_but_keeps_decay() {
        let p = vec![param("classifier.weight", &[1.0, 2.0], false)];
        let mut opt = Lars::new(0.9, 0.1);
        opt.step(&p, &grads_for(&p, &[&[0.5, 0.0]]), 0.2).unwrap();
        close(&values(&p[0]), &[0.88, 1.96]);
    }

    #[test]
    fn zero_weights_get_trust_one_and_missing_grads_are_skipped() {
        let params = vec![
            param("fc", &[0.0, 0.0], false),
            param("unused", &[1.0], false),
        ];
        let mut opt = Lars::new(0.9, 0.0);
        let loss = (params[0].var.as_tensor() * Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&params, &grads, 0.1).unwrap();
        close(&values(&params[0]), &[-0.1, 0.1]);
        close(&values(&params[1]), &[1.0]);
        assert_eq!(
            opt.state().len(),
            1,
            "no buffer for a parameter without gradient"
        );
    }

    /// The device (candle-op) path is what CUDA runs; on CPU it must agree with the slice path.
    #[test]
    fn device_path_matches_host_path() {
        let w: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let c: Vec<f32> = (0..1000)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
            .collect();
        for (exclude, rule) in [
            (
                false,
                Rule {
                    momentum: 0.9,
                    weight_decay: 1e-4,
                    trust_eta: Some(1e-3),
                    lr_in_momentum: true,
                    nesterov: false,
                },
            ),
            (
                true,
                Rule {
                    momentum: 0.9,
                    weight_decay: 0.0,
                    trust_eta: None,
                    lr_in_momentum: true,
                    nesterov: false,
                },
            ),
            (
                false,
                Rule {
                    momentum: 0.9,
                    weight_decay: 5e-4,
                    trust_eta: None,
                    lr_in_momentum: false,
                    nesterov: true,
                },
            ),
        ] {
            let a = [param("w", &w, exclude)];
            let b = [param("w", &w, exclude)];
            let (mut ba, mut bb) = (Buffers::default(), Buffers::default());
            for _ in 0..3 {
                let ga = grads_for(&a, &[&c]);
                let gb = grads_for(&b, &[&c]);
                update_host(
                    &mut ba,
                    &a[0],
                    ga.get(a[0].var.as_tensor()).unwrap(),
                    0.3,
                    rule,
                )
                .unwrap();
                update_device(
                    &mut bb,
                    &b[0],
                    gb.get(b[0].var.as_tensor()).unwrap(),
                    0.3,
                    rule,
                )
                .unwrap();
            }
            let (va, vb) = (values(&a[0]), values(&b[0]));
            for (x, y) in va.iter().zip(&vb) {
                assert!((x - y).abs() < 1e-5, "{rule:?}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let coeffs: [&[f32]; 1] = [&[0.3, -0.2, 0.1]];
        let a = vec![param("w", &[1.0, 2.0, 3.0], false)];
        let mut opt_a = Lars::new(0.9, 1e-4);
        opt_a.step(&a, &grads_for(&a, &coeffs), 1.0).unwrap();
        let saved_w = values(&a[0]);
        let saved_state = opt_a.state();
        opt_a.step(&a, &grads_for(&a, &coeffs), 1.0).unwrap();

        let b = vec![param("w", &saved_w, false)];
        let mut opt_b = Lars::new(0.9, 1e-4);
        opt_b.load_state(&saved_state).unwrap();
        opt_b.step(&b, &grads_for(&b, &coeffs), 1.0).unwrap();
        assert_eq!(values(&a[0]), values(&b[0]));
    }
}
