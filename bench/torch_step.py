#!/usr/bin/env python3
"""PyTorch twin of `cargo bench -p semiflow-kernels --bench speed`: the same two CIFAR ResNets, the
same eval forward and training step (forward + backward + SGD momentum 0.9, weight decay 5e-4),
CPU, 2 threads, channels-last. Prints the same table.

Filters: SEMIFLOW_BENCH=gemm,small,r18  SEMIFLOW_BENCH_BATCH=64,256  SEMIFLOW_BENCH_STEPS=5
TORCH_DEVICE=cuda (default cpu): the same steps on a GPU, eager fp32 (TF32 off, as candle), the
twin of the Rust bench's SEMIFLOW_BENCH_DEVICE=cuda.
"""
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

THREADS = int(os.environ.get("TORCH_THREADS", "2"))
torch.set_num_threads(THREADS)
CLASSES = 10
DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    # Plain fp32 matmuls and convolutions, as candle computes them.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, two basic blocks per stage."""

    def __init__(self, widths):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin, side, flops = [], widths[0], 32, 2 * 3 * widths[0] * 9 * 32 * 32
        for stage, cout in enumerate(widths):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                side //= stride
                blocks.append(BasicBlock(cin, cout, stride))
                flops += 2 * (cin * cout * 9 + cout * cout * 9) * side * side
                if stride != 1 or cin != cout:
                    flops += 2 * cin * cout * side * side
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, CLASSES)
        self.flops_fwd = flops + 2 * cin * CLASSES

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def time_it(warmup, steps, f):
    for _ in range(warmup):
        f()
    times = []
    sync()
    for _ in range(steps):
        t = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_peak():
    n = 1024
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    torch.mm(a, b)
    sync()
    best = float("inf")
    for _ in range(15):  # best of 15, as the Rust bench: the median drifts on a shared VM
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main():
    sections = os.environ.get("SEMIFLOW_BENCH")
    sections = None if sections is None else [s.strip() for s in sections.split(",")]
    wants = lambda s: sections is None or s in sections
    batches = [int(b) for b in os.environ.get("SEMIFLOW_BENCH_BATCH", "64,256").split(",")]
    steps = int(os.environ.get("SEMIFLOW_BENCH_STEPS", "5"))
    on = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    print(f"PyTorch {torch.__version__} speed bench ({on}): {torch.get_num_threads()} threads, channels-last, "
          f"{steps} timed steps (median)")
    peak = gemm_peak()
    print(f"fp32 GEMM 1024^3 (torch.mm): {peak:.0f} GFLOP/s\n")
    print("| model | batch | mode | images/s | ms/step | GFLOP/s | % of GEMM peak |")
    print("|---|---|---|---|---|---|---|")
    for name, widths in [("small", (16, 32, 64, 128)), ("r18", (64, 128, 256, 512))]:
        if not wants(name):
            continue
        model = ResNet(widths).to(DEVICE, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for batch in batches:
            x = torch.randn(batch, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
            labels = torch.arange(batch, device=DEVICE) % CLASSES

            def fwd():
                model.eval()
                with torch.no_grad():
                    model(x)

            def train():
                model.train()
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), labels)
                loss.backward()
                opt.step()
                loss.item()

            rows = [("fwd (eval)", time_it(1, steps, fwd), model.flops_fwd),
                    ("train", time_it(1, steps, train), 3 * model.flops_fwd)]
            for mode, secs, flops in rows:
                gflops = batch * flops / secs / 1e9
                print(f"| {name} | {batch} | {mode} | {batch / secs:.1f} | {secs * 1e3:.1f} | {gflops:.0f} | "
                      f"{100 * gflops / peak:.0f}% |")


if __name__ == "__main__":
    main()
