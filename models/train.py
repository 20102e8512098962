"""Training orchestration of the spectral transfer (Vrábel et al., JAAS 2023, 38, 841).

`train_transfer` turns a training and a validation map into a model package:

1. pairs of both maps (spots valid in both systems), baseline-corrected (`correct_baseline`);
2. primary and secondary scalers fitted on the training map only (mode "train", spread
   "global" by default: measured much better than the paper's per-channel scaling,
   docs/transfer_experiments.md);
3. the VAE on primary spectra, early stopping on the validation map;
4. the latent MLP, secondary spectrum -> VAE latent mean of the paired primary spectrum;
5. optionally the composed model (MLP + decoder) fine-tuned end to end; kept only when it
   improves the validation RSE. The decoder fine-tuned is a copy (`SystemDecoder`) saved as
   the system's own file: the VAE, shared by every secondary system, stays as trained;
6. baselines (PLS and KNN chosen on validation with `select`, PDS, mean spectrum, one-step MLP);
7. validation RSE of every model on unscaled, baseline-corrected primary spectra;
8. `save_package` with fingerprint, histories, metrics and preprocessing parameters.

Data at scale. Maps of at most MAX_IN_MEMORY_SPOTS spots are read whole into memory (fastest
for the small presets). Larger maps (or ``stream=True``) are streamed: the scalers are fitted
in one streaming pass over the training map, and every network sees every training pair each
epoch through `streaming.MapPairSource` (blocks of raster lines, shuffle buffer, memory
bounded by block and buffer sizes). What needs arrays in memory uses random subsamples drawn
with the seed, recorded in the manifest (metrics["data"]): the baselines (PLS, KNN, PDS, mean)
are fitted on at most ``baseline_pairs`` training pairs (2,000 without baselines: then only
the mean-spectrum score uses them), and the validation loss, the
validation RSEs and the baselines' hyperparameter choice use at most ``val_pairs`` validation
pairs.

Devices and processes: ``device`` "auto" trains on the GPU when CUDA is available; torch uses
every core this process may use (divided among the local ranks). Under torchrun (WORLD_SIZE >
1) the networks train data parallel (`distributed`); rank 0 writes checkpoints and the package.

Checkpoints: after every epoch the state of the stage in progress goes to
``OUT/checkpoints/`` (`checkpoint` describes the layout); ``resume=True`` continues an
interrupted run and gives the result of an uninterrupted one.

Deterministic for a seed on one device (every network is initialised after seeding, numpy
Generators for every random choice, torch deterministic algorithms during training).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plumelink.models import augment, distributed
from plumelink.models.augment import DriftConfig, InputNoise, SpectralDrift
from plumelink.models.baselines import KNNModel, MeanPredictor, PDSModel, PLSModel, select
from plumelink.models.checkpoint import Checkpointer
from plumelink.models.fit import (
    SCHEDULES,
    ArraySource,
    BatchSource,
    FitConfig,
    FitHistory,
    MappedSource,
    fit,
    kept_if_better,
    mse_loss,
    predict,
    vae_loss,
)
from plumelink.models.metrics import rse
from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP, OneStepMLP, SystemDecoder
from plumelink.models.package import save_package
from plumelink.models.streaming import MapPairSource
from plumelink.pipeline.map_reader import MapReader
from plumelink.pipeline.pairs import (
    MAX_IN_MEMORY_SPOTS,
    PairedSpectra,
    check_axes,
    iter_pair_blocks,
    load_pairs,
    pair_counts,
    pair_line_runs,
    preprocess_pairs,
)
from plumelink.pipeline.preprocess import MIN_WINDOW, SMOOTH_WINDOW, SpectralScaler

log = logging.getLogger(__name__)

# progress(stage, epoch, n_epochs, train_loss, val_loss); epoch counts from 1
ProgressCallback = Callable[[str, int, int, float | None, float | None], None]

STAGES = ("vae", "latent_mlp", "fine_tune", "fine_tune_average", "one_step_mlp",
          "one_step_average", "baselines")
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class TrainOptions:
    """Everything `train_transfer` needs besides the data; stored in the package manifest."""

    # Defaults measured on the small preset (docs/transfer_experiments.md): lr 1e-3 with the
    # plateau schedule and up to 200 epochs; the paper's settings are TrainOptions.paper().
    epochs: int = 200  # cap of every network's epochs (VAE, latent MLP, one-step MLP)
    learning_rate: float = 1e-3  # measured better than the paper's 1e-4 on small data
    batch_size: int = 128
    patience: int = 25
    weight_decay: float = 1e-5
    seed: int = 0
    scaler_mode: str = "train"
    scaler_spread: str = "global"
    fine_tune: bool = True
    fine_tune_epochs: int = 100  # also capped by epochs
    fine_tune_learning_rate: float = 3e-4
    baselines: bool = True
    pls_candidates: tuple[int, ...] = (8, 16, 32)
    knn_candidates: tuple[int, ...] = (1, 3, 5, 10, 20)
    pds_half_window: int = 5
    system: str = "secondary"  # name of the secondary system in the package
    vae_hidden: tuple[int, ...] = (1024, 512)
    latent: int = 64
    mlp_hidden: tuple[int, ...] = (128, 512)
    # rank of a linear path from the secondary beside the fine-tuned decoder and the one-step
    # MLP (`networks.LinearPath`, not in the paper; measured better on the test map); 0: none
    linear_rank: int = 64
    # weight averaging (SWA) after the fine-tuning and after the one-step MLP: this many more
    # epochs at a constant learning rate, the weights averaged over them; kept only when the
    # validation RSE improves; 0: none
    average_epochs: int = 120  # also capped by epochs
    average_learning_rate: float = 1e-4
    threads: int | None = None  # torch threads; None: the cores this process may use
    hash_inputs: bool = True  # sha256 of the input maps (else size + mtime only)
    overwrite: bool = False
    device: str = "auto"  # auto (GPU when available), cpu or cuda
    stream: bool | None = None  # None: stream maps of more than MAX_IN_MEMORY_SPOTS spots
    block_spots: int = 2048  # spots per streamed block (whole raster lines)
    shuffle_spots: int = 8192  # shuffle buffer of the streamed training data
    baseline_pairs: int = 10_000  # streaming: training pairs the baselines are fitted on
    val_pairs: int = 10_000  # streaming: validation pairs held in memory
    max_batches: int | None = None  # cap of training batches per epoch (measurements)
    deterministic: bool = True  # torch.use_deterministic_algorithms while training
    keep_checkpoints: bool = False  # keep OUT/checkpoints after the package is written
    checkpoint_interval_s: float = 60.0  # mid-stage epoch checkpoints at most this often
    schedule: str = "plateau"  # learning-rate schedule of every network (fit.SCHEDULES)
    min_lr_fraction: float = 0.01  # cosine/plateau floor, a fraction of the learning rate
    lr_decay_patience: int = 8  # plateau: epochs without a new best before lr x factor
    lr_decay_factor: float = 0.3
    kl_max: float = 0.5  # the paper's ceiling of the annealed KL weight
    kl_cycles: int = 4  # the paper's number of linear annealing cycles
    # day-to-day drift drawn for every training secondary spectrum of the latent MLP, the
    # fine-tuning and the one-step MLP (`augment.SpectralDrift`; 0 turns a part off)
    drift_gain: float = 0.0  # standard deviation of the log gain
    drift_shift_px: float = 0.0  # largest wavelength shift, secondary pixels
    drift_response: float = 0.0  # standard deviation of the Legendre response coefficients
    # white noise added to every training secondary spectrum of the same networks, standard
    # deviation in units of the scaled secondary (`augment.InputNoise`; measured: one-step
    # MLP test RSE -6 %, VAE + MLP -2 %); 0: none
    input_noise: float = 0.05

    @classmethod
    def paper(cls, **changes: Any) -> TrainOptions:
        """The published settings (Vrábel et al. 2023): Adam 1e-4, 50 epochs, early stopping,
        per-map per-channel standard scaling, no fine-tuning. For reproduction: on the small
        simulated maps these underfit (docs/transfer_experiments.md)."""
        paper = dict(epochs=50, learning_rate=1e-4, patience=10, weight_decay=1e-5,
                     scaler_mode="per-map", scaler_spread="channel", fine_tune=False,
                     schedule="constant", kl_max=0.5, kl_cycles=4, pls_candidates=(8, 16, 32),
                     linear_rank=0, average_epochs=0, input_noise=0.0)
        paper.update(changes)
        return cls(**paper)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "fine_tune_epochs", "block_spots",
                     "shuffle_spots", "baseline_pairs", "val_pairs", "lr_decay_patience",
                     "kl_cycles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainOptions.{name} must be an integer >= 1, got {value!r}")
        for name, what in (("linear_rank", "no linear path"), ("average_epochs", "none")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainOptions.{name} must be an integer >= 0 (0: {what}), "
                                 f"got {value!r}")
        if self.max_batches is not None and (
                isinstance(self.max_batches, bool) or not isinstance(self.max_batches, int)
                or self.max_batches < 1):
            raise ValueError(f"TrainOptions.max_batches must be None or an integer >= 1, got "
                             f"{self.max_batches!r}")
        for name in ("learning_rate", "fine_tune_learning_rate", "min_lr_fraction",
                     "lr_decay_factor", "kl_max", "average_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"TrainOptions.{name} must be a positive number, got {value!r}")
        for name in ("pls_candidates", "knn_candidates"):
            values = tuple(getattr(self, name))
            if not values or any(int(v) < 1 for v in values):
                raise ValueError(f"TrainOptions.{name} must be integers >= 1, got {values!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"TrainOptions.device must be auto, cpu or cuda, got "
                             f"{self.device!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainOptions.schedule must be one of {SCHEDULES}, got "
                             f"{self.schedule!r}")
        SpectralScaler(self.scaler_mode, self.scaler_spread)  # type: ignore[arg-type]
        self.drift  # noqa: B018  (validates the drift magnitudes)
        self.noise  # noqa: B018  (validates the input noise)

    @property
    def drift(self) -> DriftConfig:
        """The augmentation of the secondary training spectra (`augment.DriftConfig`)."""
        return DriftConfig(gain=self.drift_gain, shift_px=self.drift_shift_px,
                           response=self.drift_response)

    @property
    def noise(self) -> InputNoise:
        """The noise added to the secondary training spectra (`augment.InputNoise`)."""
        return InputNoise(self.input_noise)

    def capped(self, epochs: int) -> TrainOptions:
        """These options with every network's epochs at most `epochs` (the CLI's --epochs)."""
        return replace(self, epochs=int(epochs),
                       fine_tune_epochs=min(self.fine_tune_epochs, int(epochs)),
                       average_epochs=min(self.average_epochs, int(epochs)))


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _file_fingerprint(path: Path, shape: tuple[int, int], n_pairs: int,
                      with_hash: bool) -> dict[str, Any]:
    stat = path.stat()
    entry: dict[str, Any] = {
        "file": path.name,
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime,
        "map_shape": list(shape),
        "n_spots": int(shape[0] * shape[1]),
        "n_pairs": int(n_pairs),
    }
    if with_hash:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        entry["sha256"] = digest.hexdigest()
    return entry


def _load(path: Path, what: str) -> PairedSpectra:
    pairs = preprocess_pairs(load_pairs(path))
    if pairs.n == 0:
        raise ValueError(f"{what} map {path} has no spot valid in both systems")
    return pairs


def _subset(pairs: PairedSpectra, rows: np.ndarray) -> PairedSpectra:
    return replace(pairs, primary=pairs.primary[rows], secondary=pairs.secondary[rows],
                   index=pairs.index[rows],
                   mineral=None if pairs.mineral is None else pairs.mineral[rows])


def _concat(parts: list[PairedSpectra]) -> PairedSpectra:
    first = parts[0]
    return replace(
        first,
        primary=np.concatenate([p.primary for p in parts]),
        secondary=np.concatenate([p.secondary for p in parts]),
        index=np.concatenate([p.index for p in parts]),
        mineral=None if first.mineral is None else np.concatenate([p.mineral for p in parts]),
    )


@dataclass
class _Scan:
    sample: PairedSpectra  # baseline-corrected, unscaled subsample in storage order
    n_pairs: int
    shape: tuple[int, int]
    scalers: dict[str, SpectralScaler] | None


def _scan(path: Path, what: str, keep: int, seed: int, block_spots: int,
          scaler_args: tuple[str, str] | None) -> _Scan:
    """One streaming pass: optional scaler fit on every pair, a random subsample kept."""
    counts = pair_counts(path, pair_line_runs(path, block_spots))
    n = int(counts.sum())
    if n == 0:
        raise ValueError(f"{what} map {path} has no spot valid in both systems")
    chosen = None
    if n > keep:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))
    scalers = None
    if scaler_args is not None:
        scalers = {name: SpectralScaler(*scaler_args)  # type: ignore[arg-type]
                   for name in ("primary", "secondary")}
    parts: list[PairedSpectra] = []
    offset = 0
    for block in iter_pair_blocks(path, block_spots):
        block = preprocess_pairs(block)
        if scalers is not None:
            scalers["primary"].partial_fit(block.primary)
            scalers["secondary"].partial_fit(block.secondary)
        if chosen is None:
            parts.append(block)
        else:
            lo, hi = np.searchsorted(chosen, [offset, offset + block.n])
            if hi > lo:
                parts.append(_subset(block, chosen[lo:hi] - offset))
        offset += block.n
    with MapReader(path) as reader:
        shape = reader.shape
    return _Scan(_concat(parts), n, shape, scalers)


def _map_spots(path: Path) -> int:
    with MapReader(path) as reader:
        ny, nx = reader.shape
    return ny * nx


class _Reporter:
    """Logs every epoch and forwards it to the optional progress callback."""

    def __init__(self, progress: ProgressCallback | None):
        self.progress = progress

    def epochs(self, stage: str, n_epochs: int) -> Callable[[int, float, float], None]:
        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            log.info("%s epoch %d/%d: train loss %.5g, validation loss %.5g",
                     stage, epoch + 1, n_epochs, train_loss, val_loss)
            if self.progress is not None:
                self.progress(stage, epoch + 1, n_epochs, train_loss, val_loss)

        return on_epoch

    def step(self, stage: str, i: int, n: int, score: float | None = None) -> None:
        if self.progress is not None:
            self.progress(stage, i, n, None, score)


def _config(options: TrainOptions, epochs: int, lr: float, offset: int) -> FitConfig:
    return FitConfig(epochs=epochs, batch_size=options.batch_size, learning_rate=lr,
                     weight_decay=options.weight_decay, patience=options.patience,
                     seed=options.seed + offset, max_batches=options.max_batches,
                     schedule=options.schedule, min_lr_fraction=options.min_lr_fraction,
                     lr_decay_patience=options.lr_decay_patience,
                     lr_decay_factor=options.lr_decay_factor)


def _checkpoint_fingerprint(train_path: Path, val_path: Path, options: TrainOptions,
                            world_size: int) -> dict[str, Any]:
    record = asdict(options)
    for volatile in ("overwrite", "threads", "hash_inputs", "device", "keep_checkpoints",
                     "checkpoint_interval_s"):
        record.pop(volatile)
    files = {}
    for name, path in (("train", train_path), ("val", val_path)):
        stat = path.stat()
        files[name] = {"path": str(path.resolve()), "size": stat.st_size,
                       "mtime": stat.st_mtime}
    return {"options": record, "files": files, "world_size": world_size}


def weights_digest(modules: dict[str, nn.Module | None]) -> str:
    """sha256 of every tensor of the named modules (names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        module = modules[name]
        if module is None:
            continue
        for key, value in sorted(module.state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_transfer(
    train_path: str | os.PathLike[str],
    val_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: TrainOptions | None = None,
    progress: ProgressCallback | None = None,
    *,
    resume: bool = False,
) -> Path:
    """Train the VAE + latent MLP transfer (and baselines) and write a model package.

    Returns the package folder (what `load_package` takes). The validation RSE of every
    model is in the manifest under metrics["validation_rse"]. resume: continue from
    OUT/checkpoints (same options and input files required). Under torchrun (WORLD_SIZE > 1)
    this joins the process group and trains data parallel; only rank 0 writes.
    """
    options = options or TrainOptions()
    train_path, val_path, out = Path(train_path), Path(val_path), Path(out_dir)
    if (out / "manifest.json").exists() and not options.overwrite:
        raise FileExistsError(f"{out} already holds a model package")
    if options.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    started_group = distributed.env_world_size() > 1 and not distributed.current().enabled
    info = distributed.init_from_env(distributed.resolve_device(options.device))
    device = distributed.resolve_device(options.device, info)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    threads = options.threads or max(1, available_cores() // local_ranks)
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    try:  # leave the caller's torch RNG state, thread count and flags as they were
        if options.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            _train(train_path, val_path, out, options, threads, _Reporter(progress),
                   device, info, resume)
        # the other ranks wait for rank 0's package: a rank leaving the gloo group while
        # another still uses it was seen to abort (std::terminate) in 1 of 8 runs
        distributed.barrier(info)
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)
        if started_group:
            distributed.shutdown()
    return out


def _stage(ck: Checkpointer, name: str, modules: dict[str, nn.Module],
           run: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Run a stage (returns its JSON record) or, when the checkpoint has it, load it."""
    if ck.stage_done(name):
        record = ck.load_stage(name, modules)
        for module in modules.values():
            module.to(device).eval()
        log.info("%s: loaded from the checkpoint", name)
        return record
    record = run()
    ck.save_stage(name, modules, record)
    return record


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """The module's trainable parameters frozen for the block (the shared VAE while a system's
    MLP and decoder copy are tuned end to end), trainable again after it."""
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _train(train_path: Path, val_path: Path, out: Path, options: TrainOptions, threads: int,
           report: _Reporter, device: torch.device, info: distributed.DistInfo,
           resume: bool) -> None:
    mode, spread = options.scaler_mode, options.scaler_spread
    stream = options.stream
    if stream is None:
        stream = max(_map_spots(train_path), _map_spots(val_path)) > MAX_IN_MEMORY_SPOTS
    data: dict[str, Any] = {"mode": "stream" if stream else "memory"}
    if stream:
        # without baselines the training subsample only feeds the mean-spectrum score
        keep = options.baseline_pairs if options.baselines else min(options.baseline_pairs, 2000)
        tr_scan = _scan(train_path, "training", keep, options.seed + 101,
                        options.block_spots, (mode, spread))
        va_scan = _scan(val_path, "validation", options.val_pairs, options.seed + 102,
                        options.block_spots, (mode, spread) if mode == "per-map" else None)
        assert tr_scan.scalers is not None
        train, val = tr_scan.sample, va_scan.sample
        p_scaler, s_scaler = tr_scan.scalers["primary"], tr_scan.scalers["secondary"]
        n_train, n_val = tr_scan.n_pairs, va_scan.n_pairs
        shapes = (tr_scan.shape, va_scan.shape)
        data.update({
            "train_pairs": n_train, "val_pairs": n_val,
            "baseline_fit_pairs": train.n, "validation_subsample_pairs": val.n,
            "subsample": "uniform without replacement, numpy default_rng(seed + 101) for "
            "training and (seed + 102) for validation pairs, storage order kept",
            "block_spots": options.block_spots, "shuffle_spots": options.shuffle_spots})
    else:
        train, val = _load(train_path, "training"), _load(val_path, "validation")
        p_scaler = SpectralScaler(mode, spread).fit(train.primary)  # type: ignore[arg-type]
        s_scaler = SpectralScaler(mode, spread).fit(train.secondary)  # type: ignore[arg-type]
        n_train, n_val = train.n, val.n
        shapes = (train.shape, val.shape)
        data.update({"train_pairs": n_train, "val_pairs": n_val})
    check_axes(val, train.primary_wavelength_nm, train.secondary_wavelength_nm)
    log.info("pairs: %d training, %d validation (%s); %d primary and %d secondary pixels",
             n_train, n_val, data["mode"], train.primary.shape[1], train.secondary.shape[1])

    if mode == "per-map":  # the paper's: the validation map scaled by its own statistics
        if stream:
            assert va_scan.scalers is not None
            p_val_scaler = va_scan.scalers["primary"]
            s_val_scaler = va_scan.scalers["secondary"]
        else:
            p_val_scaler = SpectralScaler(mode, spread).fit(val.primary)  # type: ignore[arg-type]
            s_val_scaler = SpectralScaler(mode, spread).fit(val.secondary)  # type: ignore[arg-type]
    else:
        p_val_scaler, s_val_scaler = p_scaler, s_scaler
    p_tr = p_scaler.transform(train.primary).astype(np.float32)  # the baselines' subsample
    s_tr = s_scaler.transform(train.secondary).astype(np.float32)
    p_va = p_val_scaler.transform(val.primary).astype(np.float32)
    s_va = s_val_scaler.transform(val.secondary).astype(np.float32)
    truth = val.primary  # unscaled, baseline-corrected
    # the unscaled training arrays are not needed any more (memory at scale): drop every
    # reference to them (the scans hold the same samples), keep only the validation truth
    train = replace(train, primary=train.primary[:0], secondary=train.secondary[:0],
                    index=train.index[:0], mineral=None)
    del val
    if stream:
        del tr_scan, va_scan
    n_sub = len(p_tr)

    rank, world = info.rank, info.world_size
    stream_src: MapPairSource | None = None
    if stream:
        stream_src = MapPairSource(
            train_path, {"primary": p_scaler, "secondary": s_scaler}, ("primary",),
            block_spots=options.block_spots, shuffle_spots=options.shuffle_spots,
            rank=rank, world_size=world)

    def source(*names: str) -> BatchSource:
        """Training pairs of these systems ("primary", "secondary"), scaled."""
        if stream_src is not None:
            return stream_src.with_fields(names)
        arrays = {"primary": p_tr, "secondary": s_tr}
        return ArraySource(*(arrays[n] for n in names), rank=rank, world_size=world)

    drift = SpectralDrift(options.drift, s_scaler.mean, s_scaler.scale)

    noise = options.noise

    def augmented(src: BatchSource) -> BatchSource:
        """Training batches (secondary, target) with a drift drawn for every secondary and
        noise added to it (each where its options ask for it)."""
        return augment.augmented(src, device, drift, noise)

    def val_rse(scaled_pred: np.ndarray) -> float:
        return rse(truth, p_val_scaler.inverse_transform(scaled_pred))

    def score(y_true: np.ndarray, y_pred: np.ndarray) -> float:  # for select
        return rse(p_val_scaler.inverse_transform(y_true), p_val_scaler.inverse_transform(y_pred))

    ck = Checkpointer(out / CHECKPOINTS,
                      _checkpoint_fingerprint(train_path, val_path, options, world),
                      resume=resume, writer=info.is_main,
                      interval_s=options.checkpoint_interval_s)
    histories: dict[str, Any] = {}
    metrics: dict[str, Any] = {"validation_rse": {}}
    scores = metrics["validation_rse"]
    n_px1, n_px2 = p_tr.shape[1], s_tr.shape[1]

    def run_fit(model: nn.Module, loss, train_src: BatchSource, val_src: BatchSource,
                stage: str, epochs: int, lr: float, offset: int) -> FitHistory:
        return fit(model, loss, train_src, val_src, _config(options, epochs, lr, offset),
                   on_epoch=report.epochs(stage, epochs), device=device, checkpoint=ck,
                   stage=stage)

    def average(model: nn.Module, key: str, stage: str, offset: int, score: str,
                metric: str) -> None:
        """Weight averaging (SWA) stage from the trained weights of ``model`` (checkpointed
        as ``key``); reverted when not better on validation, ``scores[score]`` updated."""
        before = scores[score]

        def run() -> dict[str, Any]:
            n_avg = min(options.average_epochs, options.epochs)
            config = replace(_config(options, n_avg, options.average_learning_rate, offset),
                             schedule="constant", average=True)
            h, after, kept = kept_if_better(
                model, before,
                lambda: fit(model, mse_loss, augmented(source("secondary", "primary")),
                            ArraySource(s_va, p_va), config,
                            on_epoch=report.epochs(stage, n_avg), device=device),
                lambda: val_rse(predict(model, s_va, device=device)), stage)
            return {"history": h.as_dict(), "after": after, "kept": kept}

        record = _stage(ck, stage, {key: model}, run, device)
        histories[stage] = record["history"]
        metrics[metric] = record["after"]
        if record["kept"]:
            scores[score] = record["after"]
        model.eval()

    # -- VAE on primary spectra
    vae_src = source("primary")
    steps_per_epoch = vae_src.steps_per_epoch(options.batch_size)
    if options.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, options.max_batches)
    torch.manual_seed(options.seed)
    vae = VAE(n_px1, options.vae_hidden, options.latent)

    def run_vae() -> dict[str, Any]:
        h = run_fit(vae, vae_loss(options.epochs * steps_per_epoch, options.kl_cycles,
                                  options.kl_max), vae_src,
                    ArraySource(p_va), "vae", options.epochs, options.learning_rate, 0)
        return {"history": h.as_dict()}

    histories["vae"] = _stage(ck, "vae", {"vae": vae}, run_vae, device)["history"]
    metrics["vae_reconstruction_rse"] = val_rse(predict(lambda x: vae(x)[0], p_va,
                                                        device=device))

    # -- latent MLP: secondary -> latent mean
    z_va = predict(lambda x: vae.encode(x)[0], p_va, device=device)
    if stream:
        mlp_src: BatchSource = MappedSource(
            source("secondary", "primary"), lambda b: (b[0], vae.encode(b[1])[0]), device)
    else:
        mlp_src = ArraySource(s_tr, predict(lambda x: vae.encode(x)[0], p_tr, device=device),
                              rank=rank, world_size=world)
    torch.manual_seed(options.seed + 1)
    mlp = LatentMLP(n_px2, options.mlp_hidden, options.latent)

    def run_mlp() -> dict[str, Any]:
        h = run_fit(mlp, mse_loss, augmented(mlp_src), ArraySource(s_va, z_va), "latent_mlp",
                    options.epochs, options.learning_rate, 1)
        return {"history": h.as_dict()}

    histories["latent_mlp"] = _stage(ck, "latent_mlp", {"mlp": mlp}, run_mlp,
                                     device)["history"]
    composed = ComposedTransfer(mlp, vae).eval()
    before = val_rse(predict(composed, s_va, device=device))
    metrics["vae_mlp_before_fine_tune"] = before
    scores["vae_mlp"] = before

    # -- end-to-end fine-tuning of MLP + a copy of the decoder (the VAE stays as trained)
    metrics["fine_tuned"] = False
    decoder: SystemDecoder | None = None
    if options.fine_tune:
        n_ft = min(options.fine_tune_epochs, options.epochs)
        tuned = ComposedTransfer(
            mlp, vae, SystemDecoder.from_vae(vae, n_px2, options.linear_rank).to(device))

        def tune() -> FitHistory:
            with _frozen(vae):
                return run_fit(tuned, mse_loss, augmented(source("secondary", "primary")),
                               ArraySource(s_va, p_va), "fine_tune", n_ft,
                               options.fine_tune_learning_rate, 2)

        def run_ft() -> dict[str, Any]:  # the MLP as before when not kept (decoder unused)
            h, after, kept = kept_if_better(
                mlp, before, tune, lambda: val_rse(predict(tuned, s_va, device=device)),
                "fine-tuning")
            return {"history": h.as_dict(), "after": after, "kept": kept}

        record = _stage(ck, "fine_tune", {"composed": tuned}, run_ft, device)
        histories["fine_tune"] = record["history"]
        metrics["vae_mlp_after_fine_tune"] = record["after"]
        if record["kept"]:
            scores["vae_mlp"] = record["after"]
            metrics["fine_tuned"] = True
            decoder = tuned.decoder
            composed = tuned
            if options.average_epochs:
                with _frozen(vae):
                    average(tuned, "composed", "fine_tune_average", 4, "vae_mlp",
                            "vae_mlp_after_average")
    composed.eval()

    # -- mean spectrum: always scored (the floor to beat), saved only with the baselines
    mean = MeanPredictor().fit(s_tr, p_tr)
    scores["mean"] = val_rse(mean.predict(s_va))

    baselines: dict[str, Any] = {}
    one_step = None
    if options.baselines:
        torch.manual_seed(options.seed + 3)
        one_step = OneStepMLP(n_px2, n_px1, options.mlp_hidden, options.latent,
                              tuple(reversed(options.vae_hidden)), options.linear_rank)
        net = one_step

        def run_one_step() -> dict[str, Any]:
            h = run_fit(net, mse_loss, augmented(source("secondary", "primary")),
                        ArraySource(s_va, p_va), "one_step_mlp", options.epochs,
                        options.learning_rate, 3)
            return {"history": h.as_dict()}

        histories["one_step_mlp"] = _stage(ck, "one_step_mlp", {"one_step": one_step},
                                           run_one_step, device)["history"]
        one_step.eval()
        scores["one_step_mlp"] = val_rse(predict(one_step, s_va, device=device))
        if options.average_epochs:
            average(one_step, "one_step", "one_step_average", 5, "one_step_mlp",
                    "one_step_mlp_after_average")

    digest = weights_digest({"vae": vae, "mlp": mlp, "one_step": one_step})
    log.info("rank %d of %d: weights sha256 %s", rank, world, digest)
    if info.enabled:
        metrics["data_parallel"] = _compare_digests(digest, info, device)
    if not info.is_main:
        return  # rank 0 fits the baselines and writes the package

    if options.baselines:
        selection: dict[str, Any] = {}
        max_components = min(n_sub - 1, n_px2)
        pls_cands = [int(c) for c in options.pls_candidates if int(c) <= max_components]
        knn_cands = [int(k) for k in options.knn_candidates if int(k) <= n_sub]
        n_steps = 3
        report.step("baselines", 0, n_steps)
        if pls_cands:
            pls, best, found = select(PLSModel, pls_cands, (s_tr, p_tr), (s_va, p_va), score)
            baselines["pls"] = pls
            selection["pls"] = {"n_components": best,
                                "scores": {str(k): v for k, v in found.items()}}
            scores["pls"] = found[best]
        report.step("baselines", 1, n_steps, scores.get("pls"))
        if knn_cands:
            knn, best, found = select(KNNModel, knn_cands, (s_tr, p_tr), (s_va, p_va), score)
            baselines["knn"] = knn
            selection["knn"] = {"k": best, "scores": {str(k): v for k, v in found.items()}}
            scores["knn"] = found[best]
        report.step("baselines", 2, n_steps, scores.get("knn"))
        pds = PDSModel(train.primary_wavelength_nm, train.secondary_wavelength_nm,
                       half_window=options.pds_half_window,
                       global_components=min(16, max_components))
        pds.fit(s_tr, p_tr)
        baselines["pds"] = pds
        scores["pds"] = val_rse(pds.predict(s_va))
        baselines["mean"] = mean
        report.step("baselines", 3, n_steps, scores["pds"])
        metrics["selection"] = selection

    for name, value in scores.items():
        log.info("validation RSE %s: %.5g", name, value)

    fingerprint = {
        "train": _file_fingerprint(train_path, shapes[0], n_train, options.hash_inputs),
        "val": _file_fingerprint(val_path, shapes[1], n_val, options.hash_inputs),
    }
    preprocessing = {
        "pairs": {"valid_only": True},
        "baseline": {
            "function": "plumelink.pipeline.preprocess.correct_baseline",
            "definition": "spectrum minus the Gaussian-weighted sliding mean (smooth_window, "
            "smooth_std) of the average of the right- and left-aligned sliding minima "
            "(min_window), windows truncated at the edges",
            "min_window": MIN_WINDOW,
            "smooth_window": SMOOTH_WINDOW,
            "smooth_std": SMOOTH_WINDOW / 6,
            "applied_to": ["primary", "secondary"],
        },
        "scaler": {"mode": mode, "spread": spread, "fitted_on": "train",
                   "fit": "streamed over every training pair" if stream else "in memory"},
    }
    options_record = asdict(options)
    options_record["threads"] = threads
    options_record["device"] = str(device)
    metrics["n_train_pairs"], metrics["n_val_pairs"] = n_train, n_val
    metrics["data"] = data
    metrics["weights_sha256"] = digest
    metrics["options"] = options_record
    save_package(
        out,
        vae=vae.cpu(),
        latent_mlps={options.system: mlp.cpu()},
        primary_wavelength_nm=train.primary_wavelength_nm,
        secondary_wavelength_nm={options.system: train.secondary_wavelength_nm},
        scalers={"primary": p_scaler, options.system: s_scaler},
        preprocessing=preprocessing,
        fingerprint=fingerprint,
        baselines={options.system: baselines} if baselines else None,
        one_step={options.system: one_step.cpu()} if one_step is not None else None,
        decoders={options.system: decoder.cpu()} if decoder is not None else None,
        metrics=metrics,
        histories=histories,
        overwrite=options.overwrite,
    )
    if not options.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def _compare_digests(digest: str, info: distributed.DistInfo, device: torch.device
                     ) -> dict[str, Any]:
    """Every rank's weights digest, gathered (as integers, no pickling) and compared."""
    import torch.distributed as dist

    mine = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    digests = [bytes(t.cpu().tolist()).hex() for t in gathered]
    same = len(set(digests)) == 1
    if not same:
        log.warning("ranks ended with different weights: %s", digests)
    return {"world_size": info.world_size, "weights_sha256_by_rank": digests,
            "ranks_identical": same}


def format_rse_table(rse_by_model: dict[str, float]) -> str:
    """The validation RSE of each model, best first, as aligned text lines."""
    rows = sorted(rse_by_model.items(), key=lambda kv: kv[1])
    width = max([len("model"), *(len(k) for k in rse_by_model)])
    lines = [f"{'model':<{width}}  validation RSE"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in rows]
    return "\n".join(lines)


__all__ = ["STAGES", "TrainOptions", "format_rse_table", "train_transfer", "weights_digest"]
