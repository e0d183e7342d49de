//! Every custom op against the candle-op reference: values and gradients (through candle's
//! autograd on a randomly weighted sum of the output) over a grid of shapes.

use candle_core::{backprop::GradStore, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::reference;

const TOL: f32 = 1e-4;

fn random(dims: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let len = dims.iter().product();
    let v: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|: one scale for the whole tensor, so near-zero entries do not blow up.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let e = rel_err(a, b);
    assert!(e < TOL, "{what}: relative error {e:e} >= {TOL:e}");
}

/// Gradients of Σ(y ⊙ r).
fn grads_of(y: &Tensor, r: &Tensor) -> GradStore {
    (y * r).unwrap().sum_all().unwrap().backward().unwrap()
}

#[allow(clippy::too_many_arguments)]
fn check_conv(
    n: usize,
    cin: usize,
    cout: usize,
    (h, w): (usize, usize),
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    rng: &mut ChaCha8Rng,
) {
    let case = format!("n={n} cin={cin} cout={cout} {h}x{w} k={k} s={stride} p={pad} g={groups}");
    let x = Var::from_tensor(&random(&[n, cin, h, w], rng)).unwrap();
    let wt = Var::from_tensor(&random(&[cout, cin / groups, k, k], rng)).unwrap();
    let fast = super::conv2d(&x, &wt, stride, pad, groups).unwrap();
    let refr = reference::conv2d(&x, &wt, stride, pad, groups).unwrap();
    assert_close(&format!("conv forward {case}"), &fast, &refr);
    let r = random(fast.dims(), rng);
    let (gf, gr) = (grads_of(&fast, &r), grads_of(&refr, &r));
    assert_close(
        &format!("conv dx {case}"),
        gf.get(&x).unwrap(),
        gr.get(&x).unwrap(),
    );
    assert_close(
        &format!("conv dw {case}"),
        gf.get(&wt).unwrap(),
        gr.get(&wt).unwrap(),
    );
}

/// Gradients by the adjoint identity, for geometries where candle's own conv2d backward returns
/// wrongly shaped gradients (stride 2 with a leftover input column): conv is linear in each
/// argument, so for random directions u, v: ⟨dx, v⟩ = Σ conv(v, w) ⊙ r and ⟨dw, u⟩ = Σ conv(x, u) ⊙ r,
/// with the right-hand sides from the reference forward.
#[allow(clippy::too_many_arguments)]
fn check_conv_adjoint(
    n: usize,
    cin: usize,
    cout: usize,
    (h, w): (usize, usize),
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    rng: &mut ChaCha8Rng,
) {
    let case = format!("n={n} cin={cin} cout={cout} {h}x{w} k={k} s={stride} p={pad} g={groups}");
    let x = Var::from_tensor(&random(&[n, cin, h, w], rng)).unwrap();
    let wt = Var::from_tensor(&random(&[cout, cin / groups, k, k], rng)).unwrap();
    let fast = super::conv2d(&x, &wt, stride, pad, groups).unwrap();
    let refr = reference::conv2d(&x, &wt, stride, pad, groups).unwrap();
    assert_close(&format!("conv forward {case}"), &fast, &refr);
    let r = random(fast.dims(), rng);
    let grads = grads_of(&fast, &r);
    let dot = |a: &Tensor, b: &Tensor| {
        (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let v = random(x.dims(), rng);
    let u = random(wt.dims(), rng);
    let pairs = [
        (
            "dx",
            dot(grads.get(&x).unwrap(), &v),
            dot(
                &reference::conv2d(&v, &wt, stride, pad, groups).unwrap(),
                &r,
            ),
        ),
        (
            "dw",
            dot(grads.get(&wt).unwrap(), &u),
            dot(&reference::conv2d(&x, &u, stride, pad, groups).unwrap(), &r),
        ),
    ];
    for (name, got, want) in pairs {
        let scale = want.abs().max(1.0);
        assert!(
            (got - want).abs() / scale < TOL,
            "conv {name} adjoint {case}: {got} vs {want}"
        );
    }
}

#[test]
fn conv_matches_reference_over_grid() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for n in [1, 3, 8] {
        for k in [1, 3, 7] {
            for stride in [1, 2] {
                for pad in [0, 1] {
                    for groups in [1, 2] {
                        check_conv(n, 4, 6, (9, 11), k, stride, pad, groups, &mut rng);
                        check_conv_adjoint(n, 4, 6, (9, 8), k, stride, pad, groups, &mut rng);
                    }
                }
            }
        }
    }
}

#[test]
fn conv_large_planes_take_the_per_image_paths() {
    // 40×40 outputs exceed a chunk's column target: one image per GEMM, written in place, and for
    // 1×1 stride 1 no im2col at all.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (k, stride, pad, groups) in [(1, 1, 0, 1), (1, 1, 0, 2), (3, 1, 1, 1), (3, 2, 1, 2)] {
        check_conv(3, 4, 6, (40, 40), k, stride, pad, groups, &mut rng);
    }
}

#[test]
fn conv_accepts_channel_sliced_input_and_untracked_input() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let big = Var::from_tensor(&random(&[3, 7, 6, 6], &mut rng))?;
    let x = big.narrow(1, 2, 4)?; // planar but not contiguous
    assert!(!x.is_contiguous());
    let w = Var::from_tensor(&random(&[5, 4, 3, 3], &mut rng))?;
    let fast = super::conv2d(&x, &w, 1, 1, 1)?;
    let refr = reference::conv2d(&x.contiguous()?, &w, 1, 1, 1)?;
    assert_close("sliced forward", &fast, &refr);
    let r = random(fast.dims(), &mut rng);
    let (gf, gr) = (grads_of(&fast, &r), grads_of(&refr, &r));
    assert_close("sliced dx", gf.get(&big).unwrap(), gr.get(&big).unwrap());
    assert_close("sliced dw", gf.get(&w).unwrap(), gr.get(&w).unwrap());

    // A plain input tensor (an image batch) gets no gradient, the weight still does.
    let img = random(&[2, 3, 8, 8], &mut rng);
    let w = Var::from_tensor(&random(&[4, 3, 3, 3], &mut rng))?;
    let fast = super::conv2d(&img, &w, 1, 1, 1)?;
    let refr = reference::conv2d(&img, &w, 1, 1, 1)?;
    let r = random(fast.dims(), &mut rng);
    let (gf, gr) = (grads_of(&fast, &r), grads_of(&refr, &r));
    assert!(gf.get(&img).is_none());
    assert_close("image-input dw", gf.get(&w).unwrap(), gr.get(&w).unwrap());

    // A frozen weight (a distillation teacher's) gets no gradient, the input still does: 3×3 with
    // several images per chunk, and the 1×1 path that multiplies the planes directly.
    for (n, k, pad) in [(4, 3, 1), (1, 1, 0)] {
        let x = Var::from_tensor(&random(&[n, 3, 6, 6], &mut rng))?;
        let frozen = random(&[5, 3, k, k], &mut rng);
        let fast = super::conv2d(&x, &frozen, 1, pad, 1)?;
        let refr = reference::conv2d(&x, &frozen, 1, pad, 1)?;
        let r = random(fast.dims(), &mut rng);
        let (gf, gr) = (grads_of(&fast, &r), grads_of(&refr, &r));
        assert!(gf.get(&frozen).is_none());
        assert_close("frozen-weight dx", gf.get(&x).unwrap(), gr.get(&x).unwrap());
    }
    Ok(())
}

#[test]
fn conv_rejects_mismatched_shapes() {
    let x = Tensor::zeros((1, 4, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((6, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = super::conv2d(&x, &w, 1, 1, 1).unwrap_err().to_string();
    assert!(err.contains("4 channels"), "{err}");
}

const BN_SHAPES: [&[usize]; 4] = [&[8, 5], &[3, 4, 5, 6], &[1, 3, 4, 4], &[8, 2, 3, 3]];

#[test]
fn batch_norm_train_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for dims in BN_SHAPES {
        for relu in [false, true] {
            for with_beta in [false, true] {
                let case = format!("{dims:?} relu={relu} beta={with_beta}");
                // Offset data checks the variance is not computed by cancellation.
                let x =
                    Var::from_tensor(&random(dims, &mut rng).affine(3.0, 5.0).unwrap()).unwrap();
                let c = dims[1];
                let gamma = Var::from_tensor(&(random(&[c], &mut rng) + 1.5).unwrap()).unwrap();
                let beta = Var::from_tensor(&random(&[c], &mut rng)).unwrap();
                let b = with_beta.then_some(beta.as_tensor());
                let (yf, mf, vf) = super::batch_norm_train(&x, &gamma, b, 1e-5, relu).unwrap();
                let (yr, mr, vr) = reference::batch_norm_train(&x, &gamma, b, 1e-5, relu).unwrap();
                assert_close(&format!("bn y {case}"), &yf, &yr);
                assert_close(&format!("bn mean {case}"), &mf, &mr);
                assert_close(&format!("bn var {case}"), &vf, &vr);
                assert!(
                    !mf.track_op() && !vf.track_op(),
                    "statistics must be detached"
                );
                let r = random(dims, &mut rng);
                let (gf, gr) = (grads_of(&yf, &r), grads_of(&yr, &r));
                assert_close(
                    &format!("bn dx {case}"),
                    gf.get(&x).unwrap(),
                    gr.get(&x).unwrap(),
                );
                assert_close(
                    &format!("bn dgamma {case}"),
                    gf.get(&gamma).unwrap(),
                    gr.get(&gamma).unwrap(),
                );
                if with_beta {
                    assert_close(
                        &format!("bn dbeta {case}"),
                        gf.get(&beta).unwrap(),
                        gr.get(&beta).unwrap(),
                    );
                } else {
                    assert!(gf.get(&beta).is_none());
                }
            }
        }
    }
}

#[test]
fn batch_norm_add_relu_train_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for dims in BN_SHAPES {
        for with_beta in [false, true] {
            let case = format!("{dims:?} beta={with_beta}");
            let x = Var::from_tensor(&random(dims, &mut rng)).unwrap();
            let res = Var::from_tensor(&random(dims, &mut rng)).unwrap();
            let c = dims[1];
            let gamma = Var::from_tensor(&(random(&[c], &mut rng) + 1.0).unwrap()).unwrap();
            let beta = Var::from_tensor(&random(&[c], &mut rng)).unwrap();
            let b = with_beta.then_some(beta.as_tensor());
            let (yf, mf, vf) = super::batch_norm_add_relu_train(&x, &res, &gamma, b, 1e-5).unwrap();
            let (yr, mr, vr) =
                reference::batch_norm_add_relu_train(&x, &res, &gamma, b, 1e-5).unwrap();
            assert_close(&format!("bn+add y {case}"), &yf, &yr);
            assert_close(&format!("bn+add mean {case}"), &mf, &mr);
            assert_close(&format!("bn+add var {case}"), &vf, &vr);
            let r = random(dims, &mut rng);
            let (gf, gr) = (grads_of(&yf, &r), grads_of(&yr, &r));
            for (name, v) in [("dx", &x), ("dresidual", &res), ("dgamma", &gamma)] {
                assert_close(
                    &format!("bn+add {name} {case}"),
                    gf.get(v).unwrap(),
                    gr.get(v).unwrap(),
                );
            }
            if with_beta {
                assert_close(
                    &format!("bn+add dbeta {case}"),
                    gf.get(&beta).unwrap(),
                    gr.get(&beta).unwrap(),
                );
            }
        }
    }
}

#[test]
fn batch_norm_eval_matches_reference() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for dims in BN_SHAPES {
        let c = dims[1];
        let x = random(dims, &mut rng);
        let res = random(dims, &mut rng);
        let gamma = random(&[c], &mut rng);
        let beta = random(&[c], &mut rng);
        let rm = random(&[c], &mut rng);
        let rv = (random(&[c], &mut rng).abs()? + 0.5)?;
        for relu in [false, true] {
            for b in [None, Some(&beta)] {
                let f = super::batch_norm_eval(&x, &gamma, b, &rm, &rv, 1e-5, relu)?;
                let r = reference::batch_norm_eval(&x, &gamma, b, &rm, &rv, 1e-5, relu)?;
                assert_close(&format!("bn eval {dims:?} relu={relu}"), &f, &r);
            }
        }
        let f = super::batch_norm_add_relu_eval(&x, &res, &gamma, Some(&beta), &rm, &rv, 1e-5)?;
        let r = reference::batch_norm_add_relu_eval(&x, &res, &gamma, Some(&beta), &rm, &rv, 1e-5)?;
        assert_close(&format!("bn+add eval {dims:?}"), &f, &r);
    }
    Ok(())
}
