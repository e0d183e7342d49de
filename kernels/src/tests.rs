//! Every custom op against the candle-op reference: values and gradients (through candle's
//! autograd on a randomly weighted sum of the output) over a grid of shapes.

use candle_core::{backprop::GradStore, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::reference;

const TOL: f32 = 1e-4;

/// `len` values uniform in [−1, 1).
fn random_vec(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn random(dims: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let v = random_vec(dims.iter().product(), rng);
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

/// An empty batch trains through the direct routes, the stride-2 input gradient's included (its
/// route choice looks at the batch's chunks, of which there are none).
#[test]
fn conv_backward_of_an_empty_batch_is_empty() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for (cin, cout, stride) in [(16, 32, 2), (16, 16, 1)] {
        let x = Var::from_tensor(&Tensor::zeros(
            (0, cin, 32, 32),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)?;
        let w = Var::from_tensor(&random(&[cout, cin, 3, 3], &mut rng))?;
        let y = super::conv2d(&x, &w, stride, 1, 1)?;
        assert_eq!(y.dims(), &[0, cout, 32 / stride, 32 / stride]);
        let g = y.sum_all()?.backward()?;
        assert_eq!(g.get(&x).unwrap().dims(), &[0, cin, 32, 32]);
        let dw = g.get(&w).unwrap().abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(dw, 0.0, "no images, no weight gradient");
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

/// Whether a direct route that `applies` can be compared; refusing a test geometry on a CPU with
/// AVX2 and FMA is a test bug, not a skip.
fn direct_route_available(applies: bool, g: &super::im2col::ConvGeom) -> bool {
    if !applies {
        #[cfg(target_arch = "x86_64")]
        let cpu_has_them =
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu_has_them = false;
        assert!(!cpu_has_them, "direct route refused {g:?}");
        eprintln!("direct kernels need AVX2 + FMA, which this CPU lacks: skipped");
    }
    applies
}

/// Asserts `a` and `b` are the same floats bit for bit (what the direct kernels promise).
fn assert_same_bits(a: &[f32], b: &[f32], case: impl std::fmt::Debug) {
    assert_eq!(a.len(), b.len());
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!(
            "direct and gemm routes differ for {case:?}: element {i} is {:e} vs {:e}",
            a[i], b[i]
        );
    }
}

/// The direct 3×3 kernel must reproduce the im2col + gemm route bit for bit (see `direct.rs`), so
/// switching routes leaves cached results valid. Shapes: tile remainders (Cout not a multiple of
/// 6), two-vector rows (W = 16, 32) and two-row tiles with an odd last row (W = 8, 24), inner
/// dimensions of one K block (Cin·9 ≤ 504) and of two (576 split evenly; 540 split at 512, not on a
/// channel boundary, for a one-image chunk of gemm's small-product shortcut), a tiny product, a
/// channel-sliced input view, and stride 2.
#[test]
fn direct_conv_is_bit_identical_to_the_gemm_route() {
    use super::conv::{forward_direct, forward_gemm};
    use super::direct;
    use super::im2col::ConvGeom;
    use super::storage::PlanarView;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (n, cin, cout, h, w, extra_channels, stride) in [
        // Stride 2 (even/odd column split): 16- and 8-wide outputs, odd input height.
        (3, 16, 32, 32, 32, 0, 2),
        (2, 32, 64, 16, 16, 1, 2),
        (2, 5, 13, 9, 16, 0, 2),
        (2, 3, 16, 5, 8, 0, 1),
        (3, 16, 16, 32, 32, 0, 1),
        (2, 32, 32, 16, 16, 0, 1),
        (1, 56, 7, 4, 16, 0, 1),
        (2, 5, 13, 9, 24, 0, 1),
        (3, 4, 11, 6, 16, 3, 1),
        (9, 64, 64, 8, 8, 0, 1),
        (1, 64, 32, 8, 8, 0, 1),
        (1, 60, 12, 7, 8, 0, 1),
        (1, 3, 4, 1, 8, 0, 1),
    ] {
        let g = ConvGeom::new(&[n, cin, h, w], &[cout, cin, 3, 3], stride, 1, 1).unwrap();
        if !direct_route_available(direct::applies(&g), &g) {
            return;
        }
        // Channels cin..cin+extra of each image are not part of the view (a channel slice).
        let c_all = cin + extra_channels;
        let x = random_vec(n * c_all * h * w, &mut rng);
        let wt = random_vec(cout * cin * 9, &mut rng);
        let xv = PlanarView {
            offset: extra_channels.min(1) * h * w,
            sn: c_all * h * w,
            sc: h * w,
        };
        assert_same_bits(
            &forward_direct(&g, &x, &xv, &wt),
            &forward_gemm(&g, &x, &xv, &wt),
            (n, cin, cout, h, w, extra_channels, stride),
        );
    }
}

/// The direct stride-2 input gradient must reproduce GEMM + col2im bit for bit. Shapes: the
/// small ResNet's two downsampling layers (16- and 8-wide outputs), channel counts that leave
/// tile remainders (Cin 5, 7; Cout 13), a non-square plane, 128 output channels, and an output
/// gradient that is a channel slice of a wider tensor.
#[test]
fn direct_strided_input_grad_is_bit_identical_to_the_gemm_route() {
    use super::conv::{backward_routes, input_grad_pub, strided_dx_route};
    use super::im2col::ConvGeom;
    use super::storage::PlanarView;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (n, cin, cout, h, w, extra_channels) in [
        (3, 16, 32, 32, 32, 0),
        (2, 32, 64, 16, 16, 0),
        (2, 5, 13, 16, 16, 0),
        (1, 7, 8, 16, 32, 0),
        (2, 64, 128, 16, 16, 0),
        (3, 6, 16, 16, 16, 2),
    ] {
        let g = ConvGeom::new(&[n, cin, h, w], &[cout, cin, 3, 3], 2, 1, 1).unwrap();
        if !direct_route_available(strided_dx_route(&g), &g) {
            return;
        }
        let x = random_vec(n * cin * h * w, &mut rng);
        let xv = PlanarView::new(&candle_core::Layout::contiguous((n, cin, h, w))).unwrap();
        let wt = random_vec(cout * cin * 9, &mut rng);
        let (oh, ow) = (g.oh, g.ow);
        let c_all = cout + extra_channels;
        let dy = random_vec(n * c_all * oh * ow, &mut rng);
        let dyv = PlanarView {
            offset: extra_channels.min(1) * oh * ow,
            sn: c_all * oh * ow,
            sc: oh * ow,
        };
        let gemm = backward_routes(&g, &x, &xv, &wt, &dy, &dyv, true, false, true).0;
        assert_same_bits(
            &input_grad_pub(&g, &x, &xv, &wt, &dy, &dyv),
            &gemm.expect("input gradient requested"),
            (n, cin, cout, h, w, extra_channels),
        );
    }
}

/// The direct weight gradient must reproduce the im2col + gemm route bit for bit: same chunks,
/// same K blocks, same order of sums. Shapes: one image per chunk with two K blocks (32×32), several
/// images per chunk (8×8, 4×4), 8/16/24/32/64 output channels (tile widths 1, 2, 4 vectors and
/// their mixes), Cin·9 not a multiple of the 6- and 12-wide tiles (Cin = 3, 5), the small-product
/// shortcut of gemm (Cout·Cin·9 ≤ 64·64), a channel-sliced input, batches smaller than the
/// thread count, and the downsampling geometries (3×3 and 1×1 at stride 2, 5×5 stride 2 pad 2).
#[test]
fn direct_weight_grad_is_bit_identical_to_the_gemm_route() {
    use super::conv::backward_routes;
    use super::direct;
    use super::im2col::ConvGeom;
    use super::storage::PlanarView;
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for (n, cin, cout, h, w, extra_channels, k, stride, pad) in [
        (3, 16, 16, 32, 32, 0, 3, 1, 1),
        (5, 32, 32, 8, 8, 0, 3, 1, 1),
        (9, 5, 24, 4, 4, 0, 3, 1, 1),
        (2, 3, 16, 32, 32, 0, 3, 1, 1),
        (4, 64, 64, 8, 8, 0, 3, 1, 1),
        (1, 7, 8, 6, 10, 2, 3, 1, 1),
        (6, 4, 40, 5, 7, 1, 3, 1, 1),
        // Downsampling: 3×3 stride 2 and 1×1 stride 2 (inner dimension Cin, not a multiple of 3).
        (3, 16, 32, 32, 32, 0, 3, 2, 1),
        (5, 32, 64, 16, 16, 1, 3, 2, 1),
        (4, 16, 32, 32, 32, 0, 1, 2, 0),
        (7, 48, 64, 8, 8, 0, 1, 2, 0),
        (2, 10, 16, 9, 9, 0, 5, 2, 2),
    ] {
        let g = ConvGeom::new(&[n, cin, h, w], &[cout, cin, k, k], stride, pad, 1).unwrap();
        if !direct_route_available(direct::weight_grad_applies(&g), &g) {
            return;
        }
        let c_all = cin + extra_channels;
        let x = random_vec(n * c_all * h * w, &mut rng);
        let wt = random_vec(cout * cin * k * k, &mut rng);
        let dy = random_vec(n * cout * g.p(), &mut rng);
        let xv = PlanarView {
            offset: extra_channels.min(1) * h * w,
            sn: c_all * h * w,
            sc: h * w,
        };
        let dyv = PlanarView {
            offset: 0,
            sn: cout * g.p(),
            sc: g.p(),
        };
        let (_, a) = backward_routes(&g, &x, &xv, &wt, &dy, &dyv, false, true, true);
        let (_, b) = backward_routes(&g, &x, &xv, &wt, &dy, &dyv, false, true, false);
        assert_same_bits(
            &a.unwrap(),
            &b.unwrap(),
            (n, cin, cout, h, w, extra_channels, k, stride, pad),
        );
    }
}

/// Where the small ResNet's convolution time goes at batch 256: each geometry's forward, input
/// gradient and weight gradient through the routes training takes, in ms per call × calls per
/// step. A probe, not a test: `cargo test --release -p semiflow-kernels --lib conv_time_probe --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn conv_time_probe() {
    use super::conv::{backward_routes, forward_gemm};
    use super::direct;
    use super::im2col::ConvGeom;
    use super::storage::PlanarView;
    use std::time::Instant;
    let n = 256;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut total = 0.0;
    // (cin, cout, side, k, stride, pad, calls per step)
    for (cin, cout, side, k, stride, pad, calls) in [
        (3, 16, 32, 3, 1, 1, 1),
        (16, 16, 32, 3, 1, 1, 4),
        (16, 32, 32, 3, 2, 1, 1),
        (16, 32, 32, 1, 2, 0, 1),
        (32, 32, 16, 3, 1, 1, 3),
        (32, 64, 16, 3, 2, 1, 1),
        (32, 64, 16, 1, 2, 0, 1),
        (64, 64, 8, 3, 1, 1, 3),
        (64, 128, 8, 3, 2, 1, 1),
        (64, 128, 8, 1, 2, 0, 1),
        (128, 128, 4, 3, 1, 1, 3),
    ] {
        let g = ConvGeom::new(&[n, cin, side, side], &[cout, cin, k, k], stride, pad, 1).unwrap();
        let x = random_vec(n * cin * side * side, &mut rng);
        let w = random_vec(cout * cin * k * k, &mut rng);
        let dy = random_vec(n * cout * g.p(), &mut rng);
        let xv = PlanarView {
            offset: 0,
            sn: cin * side * side,
            sc: side * side,
        };
        let dyv = PlanarView {
            offset: 0,
            sn: cout * g.p(),
            sc: g.p(),
        };
        let time = |f: &mut dyn FnMut()| {
            f();
            let t = Instant::now();
            for _ in 0..3 {
                f();
            }
            t.elapsed().as_secs_f64() * 1000.0 / 3.0
        };
        let fwd = time(&mut || {
            std::hint::black_box(super::conv::forward(&g, &x, &xv, &w));
        });
        let fwd_gemm = time(&mut || {
            std::hint::black_box(forward_gemm(&g, &x, &xv, &w));
        });
        let dw = time(&mut || {
            std::hint::black_box(backward_routes(
                &g, &x, &xv, &w, &dy, &dyv, false, true, true,
            ));
        });
        let dx = time(&mut || {
            std::hint::black_box(super::conv::input_grad_pub(&g, &x, &xv, &w, &dy, &dyv));
        });
        let per_step = (fwd + dw + dx) * calls as f64;
        total += per_step;
        println!(
            "{cin:>3}->{cout:<3} {side:>2}² k{k} s{stride} x{calls}: fwd {fwd:6.1} (gemm {fwd_gemm:6.1}, direct {}) dX {dx:6.1} dW {dw:6.1} (direct {}) ms -> {per_step:6.1} ms/step",
            direct::applies(&g),
            direct::weight_grad_applies(&g)
        );
    }
    println!("total {total:.1} ms per step");
}
