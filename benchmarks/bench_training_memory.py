"""Peak resident memory of training on a preset folder (train.h5 + val.h5), stage by stage.

`train_transfer` runs in a fresh child process (multiprocessing "spawn"), so the figure counts
training alone, whatever the calling process holds:

* peak_rss_gb: the child's ru_maxrss (the kernel's exact high-water mark of its resident set);
* segments: a sampler thread reads the child's RSS every --interval seconds; the run is cut
  at events (scan done = the "pairs: ..." log line of train.py, the end of every epoch of
  every stage, the end) and each segment reports the highest RSS sampled in it, so a peak
  can be placed (the scan and scaler fit, the VAE, the latent MLP, ...).

The issue's target: the `paper` preset (313,600 training spectra of 4062 pixels) trains with
resident memory <= 4 GB.

    python benchmarks/bench_training_memory.py DIR [--batches 200] [--epochs 1]
                                               [--baselines] [--threads N] [--json FILE]

DIR from `plumelink simulate --preset paper --out DIR` (or tiny / small for a quick run).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

TARGET_GB = 4.0


class RSSSampler:
    """Highest resident set size of this process between named events (a sampling thread)."""

    def __init__(self, interval: float = 0.01, echo: bool = False):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.echo = echo  # print every segment to stderr as it closes (kept if the run dies)
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._peak = 0
        self._n_samples = 0
        self.segments: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        rss = self._proc.memory_info().rss
        with self._lock:
            self._peak = max(self._peak, rss)
            self._n_samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RSSSampler:
        self._sample()
        self._thread.start()
        return self

    def mark(self, event: str) -> None:
        """Close the segment running up to now, naming it after the event that ends it."""
        self._sample()
        with self._lock:
            peak, self._peak = self._peak, 0
            n, self._n_samples = self._n_samples, 0
        segment = {"until": event, "t_s": round(time.perf_counter() - self.t0, 2),
                   "peak_rss_gb": peak / 1e9, "samples": n}
        self.segments.append(segment)
        if self.echo:
            print(f"segment {json.dumps(segment)}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mark("end")


class _ScanDone(logging.Handler):
    """Marks the end of the pairs scan (train.py logs "pairs: ..." once it has the data)."""

    def __init__(self, sampler: RSSSampler):
        super().__init__(logging.INFO)
        self.sampler = sampler

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("pairs:"):
            self.sampler.mark("scan and scalers")


def _train_child(train: str, val: str, options: dict[str, Any], interval: float,
                 keep: str | None) -> dict[str, Any]:
    """In the child: train, return the peak RSS, the per-segment peaks and the manifest data."""
    import torch

    from plumelink.models.train import TrainOptions, train_transfer

    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    logger = logging.getLogger("plumelink.models.train")
    logger.setLevel(logging.INFO)
    start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with RSSSampler(interval, echo=True) as sampler, tempfile.TemporaryDirectory() as tmp:
        handler = _ScanDone(sampler)
        logger.addHandler(handler)

        def progress(stage: str, epoch: int, n: int, _tr: float | None,
                     _va: float | None) -> None:
            sampler.mark(f"{stage} {epoch}/{n}")

        try:
            out = train_transfer(train, val, Path(keep) if keep else Path(tmp) / "model",
                                 TrainOptions(**options), progress)
        finally:
            logger.removeHandler(handler)
        manifest = json.loads((out / "manifest.json").read_text())
    seconds = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    metrics = manifest["metrics"]
    return {"peak_rss_gb": peak_kb * 1024 / 1e9, "rss_before_training_gb": start_kb * 1024 / 1e9,
            "seconds": seconds, "segments": sampler.segments, "data": metrics.get("data"),
            "validation_rse": metrics.get("validation_rse")}


def train_peak_rss(folder: str | Path, *, batches: int | None = 200, epochs: int = 1,
                   baselines: bool = False, threads: int | None = None, device: str = "cpu",
                   interval: float = 0.01, keep: str | Path | None = None) -> dict[str, Any]:
    """Peak RSS of `train_transfer` on FOLDER/train.h5 + FOLDER/val.h5 in a fresh process.

    batches caps the training batches per epoch of every network (None: whole epochs);
    keep: write the model package there (e.g. for bench_transfer), else it is discarded.
    """
    folder = Path(folder)
    for name in ("train.h5", "val.h5"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: make the folder with "
                                    "`plumelink simulate --preset NAME --out DIR`")
    options = {"epochs": epochs, "baselines": baselines, "max_batches": batches,
               "hash_inputs": False, "device": device, "threads": threads}
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        result = pool.submit(_train_child, str(folder / "train.h5"), str(folder / "val.h5"),
                             options, interval, None if keep is None else str(keep)).result()
    result.update({"folder": str(folder), "max_batches": batches, "epochs": epochs,
                   "baselines": baselines, "threads": threads, "device": device,
                   "target_gb": TARGET_GB})
    return result


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['folder']}: peak RSS {r['peak_rss_gb']:.2f} GB (target <= {TARGET_GB:g} GB), "
             f"{r['epochs']} epoch(s), at most {r['max_batches']} batches per network, "
             f"baselines {'on' if r['baselines'] else 'off'}, {r['seconds']:.0f} s"]
    lines += [f"  until {s['until']:<22} {s['t_s']:8.1f} s  peak {s['peak_rss_gb']:.2f} GB"
              for s in r["segments"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, metavar="DIR", help="holds train.h5 and val.h5")
    parser.add_argument("--batches", type=int, default=200,
                        help="training batches per epoch of each network (0: whole epochs)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--baselines", action="store_true", help="also fit the baselines")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--interval", type=float, default=0.01, help="RSS sampling period, s")
    parser.add_argument("--keep", type=Path, default=None, metavar="MODEL_DIR",
                        help="keep the model package there (must not hold one yet)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    r = train_peak_rss(args.folder, batches=args.batches or None, epochs=args.epochs,
                       baselines=args.baselines, threads=args.threads, device=args.device,
                       interval=args.interval, keep=args.keep)
    print(format_result(r))
    text = json.dumps(r, indent=1, default=float)
    if args.json is not None:
        args.json.write_text(text)
    print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
