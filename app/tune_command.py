"""`plumelink tune`: hyperparameter search of the VAE or the latent MLP (Optuna, Hyperband).

Several processes (or machines) started with the same --storage and --study share one study:
each runs its own trials and the sampler and pruner see everyone's. Optuna is imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plumelink.app.arguments import positive_float, positive_int


def _json_object(path: Path | None, what: str) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object")
    return data


def _vae_params(path: Path | None) -> dict | None:
    """A --vae-params file: a tune result of target vae (its best params) or plain params."""
    data = _json_object(path, "VAE parameters file")
    if data is None:
        return None
    if "best" in data:
        if data.get("target") != "vae" or not data["best"]:
            raise ValueError(f"VAE parameters file {path} is not a finished VAE study result")
        return dict(data["best"]["params"])
    return data


def _tune(args: argparse.Namespace) -> int:
    import optuna

    from plumelink.models.tune import describe_storage, tune

    if not args.verbose:  # Optuna logs every trial at INFO; keep its warnings
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = args.study or f"plumelink-{args.target}"
    out = args.out or Path(f"tune-{study}.json")
    best = tune(
        args.train, args.val, storage=args.storage, study_name=study, n_trials=args.trials,
        timeout_s=args.timeout, target=args.target, seed=args.seed, epochs=args.epochs,
        max_study_trials=args.max_study_trials, vae_params=_vae_params(args.vae_params),
        space=_json_object(args.space, "search space file"), out=out, device=args.device,
        threads=args.threads,
    )
    record = json.loads(Path(out).read_text())
    counts = ", ".join(f"{n} {state}" for state, n in record["n_trials"].items() if n)
    print(f"study {record['study']!r} ({describe_storage(args.storage)}): {counts}")
    print(f"best trial #{record['best']['number']}: {record['objective'].split(' (')[0]} "
          f"{record['best']['value']:.5g}")
    for name, value in best.items():
        print(f"  {name} = {value:.4g}" if isinstance(value, float) else f"  {name} = {value}")
    print(f"study record written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tune` subcommand to the plumelink CLI's subparsers."""
    p = subparsers.add_parser(
        "tune",
        help="search the VAE's or the latent MLP's hyperparameters (Optuna + Hyperband)",
        description="Hyperparameter search as in Vrábel et al. (JAAS 2023): Optuna's TPE "
        "sampler and Hyperband pruner (resource: epochs) over the paper's search spaces "
        "(plumelink.models.tune.SEARCH_SPACES). Target vae minimises the validation "
        "reconstruction MSE; target mlp the composed model's validation RSE under a VAE "
        "trained first (--vae-params, default the paper's). Start several workers with the "
        "same --storage and --study to share one study; writes the best parameters and "
        "every trial to --out.",
    )
    p.add_argument("--train", type=Path, required=True, metavar="T.h5", help="training map")
    p.add_argument("--val", type=Path, required=True, metavar="V.h5", help="validation map")
    p.add_argument("--storage", default=None, metavar="URL_OR_JOURNAL_FILE",
                   help="where the study lives: a journal file (processes on one machine or a "
                   "shared filesystem) or an RDB URL (sqlite:///study.db, "
                   "postgresql://user@host/db; several machines). Default: in memory, this "
                   "process only")
    p.add_argument("--study", default=None, metavar="NAME",
                   help="study name; joined if the storage holds it (default plumelink-TARGET)")
    p.add_argument("--trials", type=positive_int, default=20, metavar="N",
                   help="trials this worker runs (default 20)")
    p.add_argument("--max-study-trials", type=positive_int, default=None, metavar="N",
                   help="stop once the study holds N trials, all workers together")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="S",
                   help="stop starting trials after S seconds")
    p.add_argument("--target", choices=["vae", "mlp"], default="vae")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="epochs of a full trial, Hyperband's maximum resource (default: the "
                   "paper's, 50 for the VAE, 100 for the MLP)")
    p.add_argument("--vae-params", type=Path, default=None, metavar="BEST.json",
                   help="target mlp: the VAE's hyperparameters (a target-vae result of this "
                   "command, or a JSON object of them)")
    p.add_argument("--space", type=Path, default=None, metavar="SPACE.json",
                   help="JSON object replacing entries of the search space by name, e.g. "
                   '{"latent": {"kind": "categorical", "choices": [16, 32]}}')
    p.add_argument("--out", type=Path, default=None, metavar="BEST.json",
                   help="study record: best parameters and every trial (default "
                   "tune-STUDY.json)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampler and network seed (default: a random sampler per worker, "
                   "networks seeded 0); give workers of one study different seeds")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the networks train (auto: the GPU when CUDA is available)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch threads of this worker (default: torch's)")
    p.set_defaults(func=_tune)
