//! Training steps on CUDA against the same steps on the CPU (built only with `--features cuda`).
//!
//! On CUDA the models run on candle's own conv/BatchNorm ops and cuBLAS; on the CPU on
//! semiflow's kernels. Both must compute the same step: the loss, and every weight and
//! BatchNorm statistic after the optimizer update, agree within a float32 tolerance. Without a
//! usable GPU (no driver, no device, no cuBLAS) the tests print `SKIPPED` with the reason and pass.
#![cfg(feature = "cuda")]

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use semiflow_stages::device::DeviceChoice;
use semiflow_stages::loss::{cross_entropy, nt_xent};
use semiflow_stages::model::config::ModelCfg;
use semiflow_stages::model::Network;
use semiflow_stages::optim::{self, OptimizerKind};

/// The GPU, or `None` after printing why the test is skipped.
fn gpu(test: &str) -> Option<Device> {
    match DeviceChoice::Cuda(0).open() {
        Ok(d) => Some(d),
        Err(e) => {
            println!("SKIPPED {test}: no usable CUDA device: {e:#}");
            eprintln!("SKIPPED {test}: no usable CUDA device: {e:#}");
            None
        }
    }
}

fn cfg() -> ModelCfg {
    ModelCfg {
        depth: 10,
        width: 0.25,
        proj_dim: 32,
        ..Default::default()
    }
}

fn images(n: usize, seed: u64, dev: &Device) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.gen::<f32>() - 0.5)
        .collect();
    Tensor::from_vec(v, (n, 3, 32, 32), dev).unwrap()
}

/// Name → values of every state tensor (weights, BatchNorm running statistics), on the host.
fn state(net: &Network) -> Vec<(String, Vec<f32>)> {
    net.state_tensors()
        .into_iter()
        .map(|(n, t)| {
            let t = t.to_device(&Device::Cpu).unwrap();
            (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

/// Two supervised steps (SGD + Nesterov, weight decay): the first moves only the zero-initialized
/// classifier, the second sends gradients through the whole encoder. Returns the losses and
/// the state after both.
fn classifier_steps(dev: &Device) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let net = Network::new_classifier(&cfg(), 32, 3, 10, 1, dev, 11).unwrap();
    let mut opt = optim::build(OptimizerKind::Sgd, 0.9, 5e-4, true);
    let params = net.trainable();
    let mut losses = Vec::new();
    for step in 0..2 {
        let x = images(32, step, dev);
        let y: Vec<u32> = (0..32).map(|i| (i * 7 + step as u32) % 10).collect();
        let y = Tensor::from_vec(y, 32, dev).unwrap();
        let loss = cross_entropy(&net.logits(&x, true).unwrap(), &y).unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&params, &grads, 0.5).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
    }
    (losses, state(&net))
}

/// One SimCLR step as `pretrain` runs it: two views, NT-Xent, LARS.
fn pretrain_step(dev: &Device) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let net = Network::new_pretrain(&cfg(), 32, 3, dev, 5).unwrap();
    let mut opt = optim::build(OptimizerKind::Lars, 0.9, 1e-6, false);
    let x = Tensor::cat(&[images(24, 1, dev), images(24, 2, dev)], 0).unwrap();
    let z = net.project(&x, true).unwrap();
    let (loss, _) = nt_xent(
        &z.narrow(0, 0, 24).unwrap(),
        &z.narrow(0, 24, 24).unwrap(),
        0.2,
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    opt.step(&net.trainable(), &grads, 1.0).unwrap();
    (vec![loss.to_scalar::<f32>().unwrap()], state(&net))
}

/// Losses within 1e-4 relative; each state tensor within `tol` of the CPU's, relative to its scale.
fn assert_close(
    what: &str,
    cpu: &(Vec<f32>, Vec<(String, Vec<f32>)>),
    gpu: &(Vec<f32>, Vec<(String, Vec<f32>)>),
    tol: f32,
) {
    for (a, b) in cpu.0.iter().zip(&gpu.0) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "{what}: loss {a} on the CPU, {b} on CUDA"
        );
    }
    assert_eq!(cpu.1.len(), gpu.1.len());
    let mut worst = (0f32, String::new());
    for ((name, a), (name_b, b)) in cpu.1.iter().zip(&gpu.1) {
        assert_eq!(name, name_b);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(diff.is_finite(), "{what}: {name} is not finite on CUDA");
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    println!(
        "{what}: losses CPU {:?} / CUDA {:?}; largest relative state difference {:.2e} ({})",
        cpu.0, gpu.0, worst.0, worst.1
    );
    assert!(
        worst.0 <= tol,
        "{what}: {} differs by {:.2e} of its scale (tolerance {tol:.0e})",
        worst.1,
        worst.0
    );
}

#[test]
fn classifier_steps_on_cuda_match_the_cpu() {
    let Some(dev) = gpu("classifier_steps_on_cuda_match_the_cpu") else {
        return;
    };
    let cpu = classifier_steps(&Device::Cpu);
    let cuda = classifier_steps(&dev);
    assert_close("supervised, 2 SGD steps", &cpu, &cuda, 1e-3);
}

#[test]
fn pretrain_step_on_cuda_matches_the_cpu() {
    let Some(dev) = gpu("pretrain_step_on_cuda_matches_the_cpu") else {
        return;
    };
    let cpu = pretrain_step(&Device::Cpu);
    let cuda = pretrain_step(&dev);
    assert_close("pretrain, 1 NT-Xent + LARS step", &cpu, &cuda, 1e-3);
}
