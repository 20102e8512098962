"""Training benchmark: VAE training throughput against the machine's own matmul throughput,
and peak resident memory while training on the `paper` preset.

Measures, in one run on this machine (CPU, or the GPU with --device cuda):
  1. fp32 matrix-product throughput: torch.mm of two n x n matrices (default 4096), best of
     --repeats, in GFLOP/s (2 n^3 flops per product);
  2. VAE training steps (the package's VAE: 4062 -> 1024 -> 512 -> 64 -> ... -> 4062, Adam,
     the training loss of `fit`) on random data shaped like primary spectra, at batch 128
     and a larger batch: samples/s (best window of 5 steps, as (1) is a best of; the mean
     over all steps too), and the achieved GFLOP/s counting 6 flops per dense
     weight per sample (forward 2, backward 4) as a fraction of (1). Target >= 0.5;
  3. optional --paper DIR (a folder with train.h5 and val.h5, e.g. from
     `plumelink simulate --preset paper --out DIR`): `train_transfer` streaming the maps for
     one epoch capped at --paper-batches batches per network (baselines with
     --paper-baselines), in a fresh child process, and its peak resident memory (ru_maxrss,
     and per stage: bench_training_memory.py). Target <= 4 GB.

    python benchmarks/bench_training.py [--device cpu|cuda] [--threads N] [--steps 20]
                                        [--paper DIR] [--paper-batches 200]
                                        [--paper-baselines] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plumelink.models.fit import make_adam, vae_loss
from plumelink.models.networks import VAE

N_PRIMARY = 4062  # primary pixels of the simulated bench (and the paper's data set)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """Best fp32 throughput of torch.mm(n x n, n x n), GFLOP/s."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def dense_weights(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def vae_training(device: torch.device, batch_size: int, steps: int, warmup: int = 3,
                 window: int = 5) -> dict[str, float]:
    """samples/s (best window of `window` steps) and GFLOP/s of VAE training steps on random
    spectra-shaped data; samples_per_s_mean over all timed steps."""
    torch.manual_seed(0)
    vae = VAE(N_PRIMARY, (1024, 512), 64).to(device)
    optimiser = make_adam(vae, 1e-4, 1e-5)  # what `fit` trains with
    loss_fn = vae_loss(steps + warmup)
    data = torch.randn(batch_size * 4, N_PRIMARY).to(device)
    vae.train()

    def step(i: int) -> None:
        start = (i % 4) * batch_size
        loss, _ = loss_fn(vae, (data[start : start + batch_size],), i)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for i in range(warmup):
        step(i)
    _sync(device)
    # best window of `window` steps, like the matmul's best of repeats (on a shared machine
    # both then measure the quietest moment), and the mean over every timed step
    windows, i = [], warmup
    while i < warmup + steps:
        n = min(window, warmup + steps - i)
        t = time.perf_counter()
        for k in range(i, i + n):
            step(k)
        _sync(device)
        windows.append((n, time.perf_counter() - t))
        i += n
    samples_per_s = max(n * batch_size / dt for n, dt in windows)
    mean_per_s = steps * batch_size / sum(dt for _, dt in windows)
    flops_per_sample = 6 * dense_weights(vae)
    return {"batch_size": batch_size, "samples_per_s": samples_per_s,
            "samples_per_s_mean": mean_per_s,
            "gflops": samples_per_s * flops_per_sample / 1e9,
            "flops_per_sample": flops_per_sample}


def paper_memory(folder: Path, batches: int, device: str, threads: int | None,
                 baselines: bool = False) -> dict[str, Any]:
    """Peak RSS of train_transfer on DIR/train.h5 + DIR/val.h5 (streamed, 1 epoch, capped),
    in a fresh child process (`bench_training_memory`): it counts training alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_training_memory import train_peak_rss

    return train_peak_rss(folder, batches=batches, device=device, threads=threads,
                          baselines=baselines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all)")
    parser.add_argument("--n", type=int, default=4096, help="matrix size of the matmul")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed VAE training steps")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--paper", type=Path, default=None, metavar="DIR")
    parser.add_argument("--paper-batches", type=int, default=200)
    parser.add_argument("--paper-baselines", action="store_true",
                        help="also fit the baselines in the --paper measurement")
    parser.add_argument("--only-paper", action="store_true", help="skip (1) and (2)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads(),
                              "torch": torch.__version__}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as stated
        torch.backends.cudnn.allow_tf32 = False
    peak = 0.0 if args.only_paper else matmul_gflops(device, args.n, args.repeats)
    if not args.only_paper:
        result["matmul_gflops"] = peak
        print(f"fp32 matmul {args.n}^3: {peak:,.1f} GFLOP/s ({device}, "
              f"{result['threads']} threads)")
    result["vae"] = []
    for bs in [] if args.only_paper else args.batches:
        r = vae_training(device, bs, args.steps)
        r["fraction_of_matmul"] = r["gflops"] / peak
        result["vae"].append(r)
        print(f"VAE training, batch {bs}: {r['samples_per_s']:,.0f} samples/s (mean "
              f"{r['samples_per_s_mean']:,.0f}), "
              f"{r['gflops']:,.1f} GFLOP/s = {r['fraction_of_matmul']:.2f} of matmul "
              f"(target >= 0.5)")
    if args.paper is not None:
        r = paper_memory(args.paper, args.paper_batches, args.device, args.threads,
                         args.paper_baselines)
        result["paper"] = r
        print(f"paper preset, {args.paper_batches} batches per network: peak RSS "
              f"{r['peak_rss_gb']:.2f} GB (target <= 4 GB) in {r['seconds']:.0f} s")
    text = json.dumps(result, indent=1, default=float)
    if args.json is not None:
        args.json.write_text(text)
    print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
