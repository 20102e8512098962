"""`plumelink evaluate`: score a model package on a test map, write metrics.json and a report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from plumelink.app.arguments import positive_int
from plumelink.pipeline.map_layout import MapFileError


def _k_values(text: str) -> list[int]:
    """'2-10' or '2,3,5' -> list of k (each >= 2)."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-", 1))
            values = list(range(lo, hi + 1))
        else:
            values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad k list {text!r}; expected e.g. 2-10 or 2,4,8") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"k values must be at least 2, got {text!r}")
    return values


def _rounded(value: float | None) -> str:
    """A rank correlation as it means something: two decimals."""
    return "n/a" if value is None else f"{value:+.2f}"


def format_metrics_table(metrics: dict) -> str:
    """Euclid, cosine, RSE and k-score of each model, best RSE first, as aligned text."""
    rows = sorted(metrics["models"].items(), key=lambda kv: kv[1]["rse"])
    width = max(len("model"), *(len(k) for k in metrics["models"]))
    lines = [f"{'model':<{width}}  {'euclid':>10}  {'cosine':>8}  {'RSE':>8}  {'k-score':>7}"]
    lines += [f"{name:<{width}}  {m['euclid']:>10.4g}  {m['cosine']:>8.4f}  {m['rse']:>8.4f}  "
              f"{m['k_score']:>7.3f}" for name, m in rows]
    return "\n".join(lines)


def format_recommendation(metrics: dict) -> str:
    """Which model to use, in words: the best on validation, with its test RSE here."""
    rec = metrics["recommended"]
    name = rec["model"]
    scores = rec.get("validation_rse") or {}
    if not scores:
        return (f"recommended model: {name} (the package records no validation RSE to "
                "choose by)")
    test = metrics["models"].get(name, {}).get("rse")
    text = (f"recommended model: {name} (lowest validation RSE, {scores[name]:.4f}"
            + (f"; test RSE {test:.4f}" if test is not None else "") + "): plumelink "
            "transfer uses it unless --use names another")
    if metrics.get("shown_model", name) != name:
        text += f"; the report's per-spot figures show {metrics['shown_model']}"
    return text


def _evaluate(args: argparse.Namespace) -> int:
    from plumelink.models.clusters import DEFAULT_K
    from plumelink.models.evaluate import evaluate_package

    if not Path(args.test).is_file():
        raise FileNotFoundError(f"test map {args.test} does not exist")
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            unit = {"kmeans": "k", "report": "figure"}.get(stage, "spectrum")
            bar = bars[stage] = tqdm(total=total, desc=f"evaluate {stage}", unit=unit,
                                     disable=args.quiet, file=sys.stderr)
        bar.update(done - bar.n)

    try:
        metrics, _ = evaluate_package(
            args.model, args.test, args.report, system=args.system, train_path=args.train,
            val_path=args.val, k_values=args.k or DEFAULT_K,
            max_kmeans_spectra=args.kmeans_spectra, block_spots=args.block_spots,
            progress=progress, model=args.use)
    except MapFileError as exc:  # not a map, damaged, busy: the CLI reports ValueErrors
        raise ValueError(str(exc)) from exc
    finally:
        for bar in bars.values():
            bar.close()
    print(format_metrics_table(metrics))
    conf = metrics["confidence"]
    print(f"k-means: k={metrics['kmeans']['k']}; compression ratio of the latent library "
          f"{metrics['compression']['ratio']:.1f}; confidence ({conf['method']}) Spearman vs "
          f"the error of {conf['error_of']} {_rounded(conf['spearman_vs_euclid'])}")
    print(format_recommendation(metrics))
    print(f"metrics and report written to {args.report}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand to the plumelink CLI's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="score every model of a package on a test map; write metrics.json and report.html",
        description="Evaluate a model package on a test map as in Table 1 of Vrábel et al. "
        "(JAAS 2023): Euclidean distance, negative cosine, RSE and k-score of every model on "
        "unscaled, baseline-corrected primary spectra. k-means is fitted on the primary "
        "training map and k chosen by silhouette on the validation map (the maps recorded in "
        "the package, or --train/--val). Writes OUTDIR/metrics.json, OUTDIR/report.html and "
        "its figures as PNG.",
    )
    p.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR",
                   help="model package folder (from plumelink train)")
    p.add_argument("--test", type=Path, required=True, metavar="TEST.h5", help="test map")
    p.add_argument("--report", type=Path, required=True, metavar="OUTDIR",
                   help="folder for metrics.json, report.html and the figures")
    p.add_argument("--train", type=Path, default=None, metavar="T.h5",
                   help="training map for the k-means (default: the one the package records)")
    p.add_argument("--val", type=Path, default=None, metavar="V.h5",
                   help="validation map for choosing k (default: the one the package records)")
    p.add_argument("--system", default=None,
                   help="secondary system of the package (default: its only one)")
    p.add_argument("--k", type=_k_values, default=None, metavar="K",
                   help="k values to try, e.g. 2-10 (default) or 3,5,8")
    p.add_argument("--kmeans-spectra", type=positive_int, default=20_000, metavar="N",
                   help="training spectra subsampled for the k-means (default 20000)")
    p.add_argument("--block-spots", type=positive_int, default=4096, metavar="N",
                   help="test spectra processed at a time (default 4096)")
    p.add_argument("--use", default=None, metavar="NAME",
                   help="model whose per-spot maps, intervals and spectra the report shows "
                   "(default: the package's recommended one, lowest validation RSE)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)
