"""The `plumelink` command line: thin calls into pipeline and models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from plumelink.app.arguments import (
    add_compression,
    compression_arg,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from plumelink.pipeline.map_layout import MapFileError

log = logging.getLogger("plumelink")

# the store's lossless filters; "none" stands for no filter on the command line


def _simulate(args: argparse.Namespace) -> int:
    from plumelink.pipeline.simulate import PRESETS, simulate_dataset

    total = PRESETS[args.preset].n_spots
    with tqdm(total=total, unit="pair", desc=f"simulate {args.preset}",
              disable=args.quiet, file=sys.stderr) as bar:
        paths = simulate_dataset(
            args.preset,
            args.out,
            seed=args.seed,
            truth=args.truth,
            compression=compression_arg(args.compression),
            secondary=args.secondary,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"simulated {args.preset} data set ({total} paired spectra) in {Path(args.out)}")
    return 0


def parse_dims(text: str) -> dict[str, tuple[int, int]]:
    """'train=560x560,val=266x500' -> {"train": (560, 560), "val": (266, 500)} (ny x nx)."""
    dims: dict[str, tuple[int, int]] = {}
    for item in text.split(","):
        name, sep, shape = item.strip().partition("=")
        ny, x, nx = shape.strip().lower().partition("x")
        if not (sep and x and name.strip() and ny.strip().isdigit() and nx.strip().isdigit()):
            raise argparse.ArgumentTypeError(
                f"bad dims item {item.strip()!r}; expected NAME=NYxNX, e.g. train=560x560"
            )
        if int(ny) < 1 or int(nx) < 1:
            raise argparse.ArgumentTypeError(f"dims {item.strip()!r} must be at least 1x1")
        if name.strip() in dims:
            raise argparse.ArgumentTypeError(f"dims name {name.strip()!r} is given twice")
        dims[name.strip()] = (int(ny), int(nx))
    return dims


def _import_npy(args: argparse.Namespace) -> int:
    from plumelink.pipeline.import_npy import PAPER_DIMS, import_npy

    dims = {**PAPER_DIMS, **(args.dims or {})}
    total = sum(ny * nx for ny, nx in dims.values())
    with tqdm(total=total, unit="pair", desc="import-npy", disable=args.quiet,
              file=sys.stderr) as bar:
        paths = import_npy(
            args.directory,
            args.out,
            dims=dims,
            compression=compression_arg(args.compression),
            progress=lambda done, _total: bar.update(done - bar.n),
            step=args.step,
        )
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"imported {len(paths)} maps ({total} spots) from {Path(args.directory)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from plumelink.models.train import (
        ConfigError,
        TrainConfig,
        format_rse_table,
        load_config,
        train_transfer,
    )

    flags = {"baselines": False if args.no_baselines else None, "seed": args.seed,
             "device": args.device, "stream": True if args.stream else None,
             "max_batches": args.max_batches, "threads": args.threads,
             "linear_rank": args.linear_rank, "input_noise": args.input_noise}
    settings = {k: v for k, v in flags.items() if v is not None}  # the flags given win
    if args.config is not None and args.paper:
        print("plumelink train: --paper and --config exclude each other (the paper's "
              "settings are TrainConfig.paper())", file=sys.stderr)
        return 2
    try:
        if args.config is not None:
            options = load_config(args.config, **settings)
        else:
            options = TrainConfig.paper(**settings) if args.paper else TrainConfig(**settings)
    except ConfigError as e:
        print(f"plumelink train: {e}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports
    quiet = args.quiet or rank != 0
    if args.epochs is not None:
        options = options.capped(args.epochs)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, epoch: int, n_epochs: int, train_loss: float | None,
                 val_loss: float | None) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[stage] = tqdm(total=n_epochs, desc=f"train {stage}", unit="step"
                                     if stage == "baselines" else "epoch",
                                     disable=quiet, file=sys.stderr)
        post = {}
        if train_loss is not None:
            post["train"] = f"{train_loss:.4g}"
        if val_loss is not None:
            post["val"] = f"{val_loss:.4g}"
        if post:
            bar.set_postfix(post, refresh=False)
        bar.update(epoch - bar.n)

    try:
        folder = train_transfer(args.train, args.val, args.out, options, progress=progress,
                                resume=args.resume)
    finally:
        for bar in bars.values():
            bar.close()
    if rank != 0:
        return 0
    manifest = json.loads((folder / "manifest.json").read_text())
    print(format_rse_table(manifest["metrics"]["validation_rse"]))
    print(f"model package written to {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plumelink",
        description="LIBS bench with two spectrometers: acquisition, maps and spectral transfer.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="write simulated train/val/test maps of a pegmatite sample",
        description="Write train.h5, val.h5 and test.h5 (three regions of one simulated "
        "pegmatite; the test map on another day) measured by both spectrometers.",
    )
    sim.add_argument("--preset", choices=["tiny", "small", "paper"], default="small")
    sim.add_argument("--out", type=Path, required=True, help="output folder")
    sim.add_argument("--seed", type=int, default=0, help="sample, instrument and noise seed")
    sim.add_argument("--truth", action="store_true",
                     help="store ground truth (mineral, composition) per spot")
    add_compression(sim)
    sim.add_argument("--secondary", default="secondary", metavar="PROFILE",
                     help="instrument profile that plays the secondary system (e.g. "
                     "broadband_ccd, a third system to join an existing model)")
    sim.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)

    imp = sub.add_parser(
        "import-npy",
        help="import the paper's .npy data set (s1_/s2_ train, val, test) as map files",
        description="Write OUT/train.h5, val.h5 and test.h5 from the public data set of "
        "Vrábel et al. (JAAS 2023): s1_{train,val,test}.npy (primary), s2_*.npy (secondary), "
        "s1_wavelengths.npy and s2_wavelengths.npy, rows in horizontal-snake order.",
    )
    imp.add_argument("directory", type=Path, metavar="DIR", help="folder of the .npy files")
    imp.add_argument("--out", type=Path, required=True, help="output folder")
    imp.add_argument(
        "--dims", type=parse_dims, default=None,
        help="ny x nx of each map, replacing the paper's by name "
        "(default train=560x560,val=266x500,test=500x500)",
    )
    imp.add_argument("--step", type=float, default=1.0,
                     help="assumed spot spacing for the setpoints (the files hold none)")
    add_compression(imp)
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import_npy)

    tr = sub.add_parser(
        "train",
        help="train the spectral transfer (VAE + latent MLP, and baselines) into a package",
        description="Train the transfer of Vrábel et al. (JAAS 2023) from a training and a "
        "validation map: a VAE of primary spectra, a latent MLP from secondary spectra, "
        "end-to-end fine-tuning and the baselines (PLS, KNN, PDS, one-step MLP, mean); print "
        "each model's validation RSE and write a model package to MODEL_DIR. Checkpoints go to "
        "MODEL_DIR/checkpoints after every epoch (--resume continues from them). Data parallel: "
        "torchrun --nproc_per_node=N -m plumelink.app.cli train ...",
    )
    tr.add_argument("--train", type=Path, required=True, metavar="T.h5", help="training map")
    tr.add_argument("--val", type=Path, required=True, metavar="V.h5", help="validation map")
    tr.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR",
                    help="model package folder (must not hold a package yet)")
    tr.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                    help="training configuration: TOML tables [data], [networks], [fit], "
                    "[fine_tune], [average], [baselines], [augment], [run] (see "
                    "plumelink.models.training.config); the flags given here override it")
    tr.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                    help="cap every network's epochs at N")
    tr.add_argument("--no-baselines", action="store_true",
                    help="train only the VAE + latent MLP (no PLS, KNN, PDS, one-step, mean)")
    tr.add_argument("--paper", action="store_true",
                    help="the published settings (Adam 1e-4, 50 epochs, per-map per-channel "
                    "scaling, no fine-tuning) instead of the defaults measured on the "
                    "simulated maps (docs/transfer_experiments.md)")
    tr.add_argument("--linear-rank", type=non_negative_int, default=None, metavar="R",
                    help="a rank-R linear path from the secondary beside the fine-tuned "
                    "decoder and the one-step MLP (not in the paper; 0: none; default: "
                    "the options' default)")
    tr.add_argument("--input-noise", type=non_negative_float, default=None, metavar="SD",
                    help="white noise added to the training secondary spectra of the networks, "
                    "standard deviation in units of the scaled secondary (a regulariser; 0: "
                    "none; default: the options' default)")
    tr.add_argument("--resume", action="store_true",
                    help="continue an interrupted training from MODEL_DIR/checkpoints (same "
                    "maps and options; gives the result of an uninterrupted run)")
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                    help="where the networks train (default auto: the GPU when CUDA is "
                    "available)")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed of every random choice (default 0)")
    tr.add_argument("--threads", type=positive_int, default=None, metavar="N",
                    help="torch threads (default: the cores of this process that no other "
                    "process keeps busy, sampled at the start and after every epoch, shared "
                    "among the ranks of torchrun; give N for bit-for-bit repeatable runs)")
    tr.add_argument("--stream", action="store_true",
                    help="stream the maps in blocks even when they are small (maps of more "
                    "than 50,000 spots are always streamed)")
    tr.add_argument("--max-batches", type=positive_int, default=None, metavar="N",
                    help="at most N training batches per epoch (measurements, smoke tests)")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_train)

    from plumelink.app import (
        acquire_command,
        bench_command,
        evaluate_command,
        export_command,
        gui_command,
        import_firefly_command,
        join_command,
        lines_command,
        peaks_command,
        repack_command,
        transfer_command,
        tune_command,
    )

    for command in (acquire_command, transfer_command, evaluate_command, join_command,
                    gui_command, tune_command, bench_command, repack_command,
                    export_command, import_firefly_command, lines_command, peaks_command):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, MapFileError) as exc:  # bad input: said in words, no traceback
        print(f"plumelink {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
