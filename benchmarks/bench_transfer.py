"""Transfer benchmark: `transfer_map` spectra/s on a whole map, against references measured
in the same run, and the peak resident memory of the transfer.

Measures, on one input map (the issue's figure: the `paper` preset's test map, 500 x 500 =
250,000 spectra) and one model package:

  1. transfer: `pipeline.transfer.transfer_map` with the package's `PackageTransfer`, input
     map -> output map file (read, baseline correction, scaling, MLP + decoder, confidence,
     write), in a fresh child process ("spawn"): transferred spectra/s and the child's peak
     RSS (ru_maxrss, the kernel's high-water mark), which counts the transfer alone;
  2. references on the same machine, in this process:
     - forward: the composed network alone (latent MLP + decoder, `models.fit.predict`) on
       --sample of the map's secondary spectra, already corrected and scaled, in memory;
     - in_memory: `PackageTransfer` on the same raw spectra in memory (everything of (1)
       except reading and writing the map files);
     - read: reading the map's valid secondary spectra alone (`MapReader.iter_blocks`);
  3. ratios transfer / reference for each (the headline: transfer / forward).

The model package is --model, or trained here (--train-folder DIR with train.h5 and val.h5;
one epoch of at most --train-batches batches per network, no baselines: the transfer's cost
does not depend on how well the networks are trained).

    python benchmarks/bench_transfer.py MAP.h5 (--model DIR | --train-folder DIR)
                                        [--block-spots 4096] [--sample 20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def quick_model(folder: str | Path, out: str | Path, batches: int = 20,
                threads: int | None = None) -> Path:
    """A model package from FOLDER/train.h5 + val.h5: 1 epoch, <= batches batches, no baselines."""
    from plumelink.models.train import TrainOptions, train_transfer

    folder = Path(folder)
    options = TrainOptions(epochs=1, baselines=False, max_batches=batches, hash_inputs=False,
                           device="cpu", threads=threads)
    return train_transfer(folder / "train.h5", folder / "val.h5", out, options)


def _transfer_child(model: str, input_map: str, out: str, block_spots: int,
                    threads: int | None) -> dict[str, Any]:
    """In the child: transfer_map of the whole map; seconds, spectra and peak RSS."""
    import torch

    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.package import load_package
    from plumelink.pipeline.transfer import read_confidence, transfer_map

    if threads:
        torch.set_num_threads(threads)
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    transfer = PackageTransfer(load_package(model))
    t = time.perf_counter()
    transfer_map(input_map, out, transfer, block_spots=block_spots, overwrite=True)
    seconds = time.perf_counter() - t
    confidence = read_confidence(out)
    assert confidence is not None
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "spectra": int(np.isfinite(confidence).sum()),
            "peak_rss_gb": peak_kb * 1024 / 1e9,
            "rss_before_transfer_gb": before_kb * 1024 / 1e9,
            "output_bytes": Path(out).stat().st_size, "threads": torch.get_num_threads()}


def transfer_in_child(model: str | Path, input_map: str | Path, out: str | Path,
                      block_spots: int = 4096, threads: int | None = None) -> dict[str, Any]:
    """(1): transfer_map in a fresh process; spectra_per_s and peak_rss_gb among the keys."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        r = pool.submit(_transfer_child, str(model), str(input_map), str(out), block_spots,
                        threads).result()
    r["spectra_per_s"] = r["spectra"] / r["seconds"]
    return r


def read_rate(input_map: str | Path, block_spots: int = 4096) -> dict[str, Any]:
    """Valid secondary spectra/s of reading the map alone."""
    from plumelink.pipeline.map_reader import MapReader

    n = 0
    t = time.perf_counter()
    with MapReader(input_map) as reader:
        for block, _ in reader.iter_blocks("secondary", block_spots):
            n += len(block)
    seconds = time.perf_counter() - t
    return {"spectra": n, "seconds": seconds, "spectra_per_s": n / seconds}


def sample_secondary(input_map: str | Path, n: int, block_spots: int = 4096) -> np.ndarray:
    """The first n valid raw secondary spectra of the map (float32), in storage order."""
    from plumelink.pipeline.map_reader import MapReader

    parts, have = [], 0
    with MapReader(input_map) as reader:
        for block, _ in reader.iter_blocks("secondary", block_spots):
            parts.append(block[: n - have])
            have += len(parts[-1])
            if have >= n:
                break
    if not have:
        raise ValueError(f"{input_map} has no valid secondary spectrum")
    return np.concatenate(parts)


def _timed(fn: Any, spectra: np.ndarray, block_spots: int, repeats: int) -> float:
    """Best spectra/s of fn over the spectra in blocks of block_spots, of `repeats` passes."""
    fn(spectra[:block_spots])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(spectra), block_spots):
            fn(spectra[i : i + block_spots])
        best = min(best, time.perf_counter() - t)
    return len(spectra) / best


def in_memory_rates(model: str | Path, spectra: np.ndarray, block_spots: int = 4096,
                    repeats: int = 2) -> dict[str, float]:
    """(2): spectra/s of the composed network alone and of PackageTransfer, in memory."""
    from plumelink.models.evaluate import PackageTransfer
    from plumelink.models.fit import predict
    from plumelink.models.package import load_package
    from plumelink.pipeline.preprocess import correct_baseline

    transfer = PackageTransfer(load_package(model))
    models = transfer.models
    network = models.package.composed(models.system)
    scaled = models.scale_secondary(correct_baseline(spectra))
    return {"forward": _timed(lambda x: predict(network, x), scaled, block_spots, repeats),
            "in_memory": _timed(transfer, spectra, block_spots, repeats)}


def run(input_map: str | Path, model: str | Path, *, block_spots: int = 4096,
        sample: int = 20_000, threads: int | None = None, workdir: str | Path | None = None
        ) -> dict[str, Any]:
    """Every measurement of the module doc; the output map is written in a temporary folder."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        transfer = transfer_in_child(model, input_map, Path(tmp) / "transferred.h5",
                                     block_spots, threads)
    reading = read_rate(input_map, block_spots)
    spectra = sample_secondary(input_map, sample, block_spots)
    rates = in_memory_rates(model, spectra, block_spots)
    rate = transfer["spectra_per_s"]
    return {
        "map": str(input_map), "model": str(model), "block_spots": block_spots,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transfer": transfer,
        "reference": {"forward_spectra_per_s": rates["forward"],
                      "in_memory_spectra_per_s": rates["in_memory"],
                      "read_spectra_per_s": reading["spectra_per_s"],
                      "sample_spectra": len(spectra)},
        "ratio": {"transfer_over_forward": rate / rates["forward"],
                  "transfer_over_in_memory": rate / rates["in_memory"],
                  "transfer_over_read": rate / reading["spectra_per_s"]},
    }


def format_result(r: dict[str, Any]) -> str:
    t, ref, ratio = r["transfer"], r["reference"], r["ratio"]
    return "\n".join([
        f"transfer_map {t['spectra']:,} spectra in {t['seconds']:.1f} s: "
        f"{t['spectra_per_s']:,.0f} spectra/s, peak RSS {t['peak_rss_gb']:.2f} GB",
        f"  forward (MLP + decoder, in memory) {ref['forward_spectra_per_s']:,.0f} spectra/s, "
        f"ratio {ratio['transfer_over_forward']:.2f}",
        f"  PackageTransfer in memory          {ref['in_memory_spectra_per_s']:,.0f} "
        f"spectra/s, ratio {ratio['transfer_over_in_memory']:.2f}",
        f"  reading the map alone              {ref['read_spectra_per_s']:,.0f} spectra/s, "
        f"ratio {ratio['transfer_over_read']:.2f}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("map", type=Path, metavar="MAP.h5", help="input map")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, metavar="DIR", help="model package")
    which.add_argument("--train-folder", type=Path, metavar="DIR",
                       help="train a quick package on DIR/train.h5 + DIR/val.h5")
    parser.add_argument("--train-batches", type=int, default=20)
    parser.add_argument("--block-spots", type=int, default=4096)
    parser.add_argument("--sample", type=int, default=20_000,
                        help="spectra of the in-memory references")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the output map is written (a temporary folder in it)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = quick_model(args.train_folder, Path(tmp) / "model", args.train_batches,
                                args.threads)
        r = run(args.map, model, block_spots=args.block_spots, sample=args.sample,
                threads=args.threads, workdir=args.workdir)
    print(format_result(r))
    text = json.dumps(r, indent=1, default=float)
    if args.json is not None:
        args.json.write_text(text)
    print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
