"""`plumelink join`: a new secondary system joins an existing model package.

Wired into the `plumelink` parser by `register(subparsers)`; the handler is a thin call into
`plumelink.models.join.join_secondary`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from plumelink.app.arguments import non_negative_int, positive_int


def format_join_report(system: str, metrics: dict) -> str:
    """The new system's validation RSE next to the reference and the other systems."""
    method = metrics.get("method", "full")
    what = "new latent MLP" if method == "full" else f"{method} of {metrics.get('base_system')}"
    rows = [(f"{system} (VAE + {what})", metrics["validation_rse"]["vae_mlp"]),
            ("mean spectrum", metrics["validation_rse"]["mean"]),
            ("primary-only reference (VAE reconstruction)", metrics["vae_reconstruction_rse"])]
    rows += [(f"{other} (as trained)", value)
             for other, value in sorted(metrics.get("other_systems_validation_rse", {}).items())]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'model':<{width}}  validation RSE"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in rows]
    budget = metrics.get("pairs") or {}
    if budget.get("n_pairs"):
        lines.append(f"from {budget['n_pairs']} of {budget['available_pairs']} training pairs "
                     f"({budget['selection']}, seed {budget['seed']}; early stopping on "
                     f"{budget['early_stopping']})")
    if "trained_parameters" in metrics:
        lines.append(f"trained parameters: {metrics['trained_parameters']:,}")
    blend = metrics.get("blend")
    if blend:
        lines.append(f"network alone: validation RSE {metrics['network_validation_rse']:.4f}; "
                     + (f"blended with PLS ({blend['components']} components) at weight "
                        f"{blend['pls_weight']:g}" if blend["weight"] < 1 else
                        "PLS blend not kept (the network alone was best)"))
    return "\n".join(lines)


def _join(args: argparse.Namespace) -> int:
    from plumelink.models.join import join_secondary

    bar: tqdm | None = None

    def progress(stage: str, epoch: int, n_epochs: int, train_loss: float | None,
                 val_loss: float | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=n_epochs, desc=f"join {stage}", unit="epoch",
                       disable=args.quiet, file=sys.stderr)
        if train_loss is not None and val_loss is not None:
            bar.set_postfix({"train": f"{train_loss:.4g}", "val": f"{val_loss:.4g}"},
                            refresh=False)
        bar.update(epoch - bar.n)

    try:
        metrics = join_secondary(args.model, args.system, args.train, args.val,
                                 epochs=args.epochs, seed=args.seed, progress=progress,
                                 replace=args.replace, fine_tune=args.fine_tune,
                                 pairs=args.pairs, pair_selection=args.pair_selection,
                                 method=args.method, rank=args.rank,
                                 base_system=args.base_system, validation=args.validation,
                                 blend=args.pls_blend)
    finally:
        if bar is not None:
            bar.close()
    print(format_join_report(args.system, metrics))
    print(f"secondary system {args.system!r} joined the model package {args.model}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `join` command to the `plumelink` sub-command parsers."""
    jo = subparsers.add_parser(
        "join",
        help="add a new secondary system to a model package (trains only its latent MLP)",
        description="Train a latent MLP from a new secondary system's spectra into the "
        "latent space of an existing model package's VAE (the shared latent space of "
        "Vrábel et al., JAAS 2023) and add it to the package. The maps pair the package's "
        "primary spectrometer with the new system; the VAE and the other systems' files "
        "stay untouched.",
    )
    jo.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR",
                    help="model package folder")
    jo.add_argument("--system", required=True, metavar="NAME",
                    help="name of the new secondary system in the package")
    jo.add_argument("--train", type=Path, required=True, metavar="T.h5",
                    help="training map (primary + the new system)")
    jo.add_argument("--val", type=Path, required=True, metavar="V.h5", help="validation map")
    jo.add_argument("--epochs", type=positive_int, default=100, metavar="N",
                    help="cap of the latent MLP's epochs (default 100, early stopping)")
    jo.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    jo.add_argument("--fine-tune", action="store_true",
                    help="also fine-tune the new MLP with a copy of the decoder, stored for "
                    "this system only (the shared VAE is never changed)")
    jo.add_argument("--pairs", type=positive_int, default=None, metavar="N",
                    help="use only N pairs of the training map, as a lab that measured only "
                    "N spots with both spectrometers (default: every pair)")
    jo.add_argument("--pair-selection", choices=("spread", "random"), default="spread",
                    help="which N pairs: spread over the map (farthest-point sampling on the "
                    "raster grid, the default) or random; both seeded with --seed")
    jo.add_argument("--method", choices=("full", "adapt", "first_layer"), default=None,
                    help="full: a new latent MLP (the default without --pairs); adapt: the "
                    "new spectra resampled onto an existing system's axis feed that "
                    "system's latent MLP with per-channel gain/offset and low-rank adapters "
                    "(the default with --pairs: fits a few hundred pairs); first_layer: a "
                    "new first layer on the existing MLP's frozen body")
    jo.add_argument("--rank", type=non_negative_int, default=None, metavar="R",
                    help="rank of the adapters of --method adapt (default 8; 0: gain, offset "
                    "and biases only)")
    jo.add_argument("--base-system", default=None, metavar="NAME",
                    help="the package system adapted from (default: the one whose range the "
                    "new system covers best)")
    jo.add_argument("--validation", choices=("pairs", "map"), default=None,
                    help="what early stopping watches: pairs (held-out 1 in 5 of the --pairs "
                    "budget, the default with --pairs) or map (the --val map, the default "
                    "without); the reported RSE is always the --val map's")
    jo.add_argument("--pls-blend", action=argparse.BooleanOptionalAction, default=None,
                    help="blend the network with PLS fitted on the same pairs, components and "
                    "weight chosen where early stopping looks (the network alone is one of "
                    "the candidates), stored as the system's own decoder; default: on with "
                    "--pairs (measured better than either alone on few pairs), off without")
    jo.add_argument("--replace", action="store_true",
                    help="retrain a system the package already has")
    jo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    jo.set_defaults(func=_join)
