"""Training orchestration of the spectral transfer (Vrábel et al., JAAS 2023, 38, 841).

`train_transfer` turns a training and a validation map into a model package, as a short list
of stages (`training.stages`, one function each) over one `training.data.TrainingData`, all
set by one `training.config.TrainConfig`:

1. the pairs of both maps (spots valid in both systems), baseline-corrected, and the primary
   and secondary scalers fitted on the training map only: the `Preprocessor` saved in the
   package (maps of more than MAX_IN_MEMORY_SPOTS spots, or ``data.stream``, are streamed,
   and what needs arrays in memory uses seeded subsamples recorded in metrics["data"]);
2. the VAE on primary spectra, early stopping on the validation map;
3. the latent MLP, secondary spectrum -> VAE latent mean of the paired primary spectrum;
4. optionally the composed model (MLP + a copy of the decoder, `SystemDecoder`) fine-tuned end
   to end, then weight-averaged; each kept only when it improves the validation RSE (the VAE,
   shared by every secondary system, stays as trained);
5. the one-step MLP and its average, the mean spectrum, PLS and KNN chosen on validation, PDS;
6. `save_package` with the fingerprint, histories, metrics (validation RSE of every model on
   unscaled, baseline-corrected primary spectra) and every option (metrics["options"]).

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

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plumelink.models import distributed
from plumelink.models.checkpoint import Checkpointer
from plumelink.models.networks import VAE, LatentMLP, OneStepMLP, SystemDecoder
from plumelink.models.package import save_package
from plumelink.models.training import stages
from plumelink.models.training.config import ConfigError, TrainConfig, load_config
from plumelink.models.training.data import (
    FreeCoreThreads,
    TrainingData,
    available_cores,
    training_threads,
)
from plumelink.models.training.stages import ProgressCallback, Reporter, Stages

log = logging.getLogger(__name__)

STAGES = ("vae", "latent_mlp", "fine_tune", "fine_tune_average", "one_step_mlp",
          "one_step_average", "baselines")
CHECKPOINTS = "checkpoints"

#: the same class under the name scripts, the CLI and the GUI use with flat option names
#: (``TrainOptions(epochs=2, fine_tune=False)``)
TrainOptions = TrainConfig


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
    options: TrainConfig | None = None,
    progress: ProgressCallback | None = None,
    *,
    resume: bool = False,
) -> Path:
    """Train the VAE + latent MLP transfer (and baselines) and write a model package.

    ``options``: a `TrainConfig` (default: the defaults). Returns the package folder (what
    `load_package` takes). The validation RSE of every model is in the manifest under
    metrics["validation_rse"]. resume: continue from OUT/checkpoints (same config and input
    files required). Under torchrun (WORLD_SIZE > 1) this joins the process group and trains
    data parallel; only rank 0 writes.
    """
    config = options or TrainConfig()
    train_path, val_path, out = Path(train_path), Path(val_path), Path(out_dir)
    if (out / "manifest.json").exists() and not config.run.overwrite:
        raise FileExistsError(f"{out} already holds a model package")
    if config.run.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    started_group = distributed.env_world_size() > 1 and not distributed.current().enabled
    info = distributed.init_from_env(distributed.resolve_device(config.run.device))
    device = distributed.resolve_device(config.run.device, info)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    threads = config.run.threads or max(1, training_threads() // local_ranks)
    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    try:  # leave the caller's torch RNG state, thread count and flags as they were
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # a run on its default threads on one CPU process re-decides them every epoch
            governor = (FreeCoreThreads(threads, apply=torch.set_num_threads)
                        if config.run.threads is None and device.type == "cpu"
                        and not info.enabled else None)
            _train(train_path, val_path, out, config, threads, Reporter(progress),
                   device, info, resume, governor)
        # the other ranks wait for rank 0's package: a rank leaving the gloo group while
        # another still uses it was seen to abort (std::terminate) in 1 of 8 runs
        distributed.barrier(info)
    finally:
        torch.use_deterministic_algorithms(previous_det)
        torch.set_num_threads(previous_threads)
        if started_group:
            distributed.shutdown()
    return out


def _checkpoint_fingerprint(train_path: Path, val_path: Path, config: TrainConfig,
                            world_size: int) -> dict[str, Any]:
    files = {}
    for name, path in (("train", train_path), ("val", val_path)):
        stat = path.stat()
        files[name] = {"path": str(path.resolve()), "size": stat.st_size,
                       "mtime": stat.st_mtime}
    return {"options": config.weights_record(), "files": files, "world_size": world_size}


def _train(train_path: Path, val_path: Path, out: Path, config: TrainConfig, threads: int,
           report: Reporter, device: torch.device, info: distributed.DistInfo,
           resume: bool, governor: FreeCoreThreads | None = None) -> None:
    """The stages in order; rank 0 then fits the baselines and writes the package."""
    data = TrainingData.load(train_path, val_path, config, rank=info.rank,
                             world_size=info.world_size)
    log.info("pairs: %d training, %d validation (%s); %d primary and %d secondary pixels",
             data.n_train, data.n_val, data.record["mode"], data.n_primary_px,
             data.n_secondary_px)
    ck = Checkpointer(out / CHECKPOINTS,
                      _checkpoint_fingerprint(train_path, val_path, config, info.world_size),
                      resume=resume, writer=info.is_main,
                      interval_s=config.run.checkpoint_interval_s)
    run = Stages(config, data, device, ck, report, threads=governor)

    vae = stages.train_vae(run)
    mlp = stages.train_latent_mlp(run, vae)
    run.metrics["fine_tuned"] = False
    decoder = stages.fine_tune(run, vae, mlp) if config.fine_tune.enabled else None
    mean = stages.score_mean(run)  # saved only with the baselines
    one_step = stages.train_one_step(run) if config.baselines.enabled else None

    digest = weights_digest({"vae": vae, "mlp": mlp, "one_step": one_step})
    log.info("rank %d of %d: weights sha256 %s", info.rank, info.world_size, digest)
    if info.enabled:
        run.metrics["data_parallel"] = _compare_digests(digest, info, device)
    if not info.is_main:
        return  # rank 0 fits the baselines and writes the package
    baselines = stages.fit_baselines(run, mean) if config.baselines.enabled else {}
    for name, value in run.scores.items():
        log.info("validation RSE %s: %.5g", name, value)
    _save(out, config, run, digest, threads, device, vae, mlp, one_step, decoder, baselines)
    if not config.run.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def _save(out: Path, config: TrainConfig, run: Stages, digest: str, threads: int,
          device: torch.device, vae: VAE, mlp: LatentMLP, one_step: OneStepMLP | None,
          decoder: SystemDecoder | None, baselines: dict[str, Any]) -> None:
    data, metrics, system = run.data, run.metrics, config.system
    options_record = config.flat()
    options_record["threads"] = threads
    if run.threads is not None:  # chosen from the free cores, and re-decided every epoch
        options_record["threads_chosen"] = "free cores"
        options_record["thread_changes"] = run.threads.changes
    options_record["device"] = str(device)
    metrics["n_train_pairs"], metrics["n_val_pairs"] = data.n_train, data.n_val
    metrics["data"] = data.record
    metrics["weights_sha256"] = digest
    metrics["options"] = options_record
    save_package(
        out,
        vae=vae.cpu(),
        latent_mlps={system: mlp.cpu()},
        primary_wavelength_nm=data.primary_wavelength_nm,
        secondary_wavelength_nm={system: data.secondary_wavelength_nm},
        scalers={"primary": data.preprocessor.primary, system: data.preprocessor.secondary},
        preprocessing=data.preprocessor.to_dict(),
        fingerprint=data.fingerprint(config.run.hash_inputs),
        baselines={system: baselines} if baselines else None,
        one_step={system: one_step.cpu()} if one_step is not None else None,
        decoders={system: decoder.cpu()} if decoder is not None else None,
        metrics=metrics,
        histories=run.histories,
        overwrite=config.run.overwrite,
    )


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


__all__ = ["STAGES", "ConfigError", "ProgressCallback", "TrainConfig", "TrainOptions",
           "available_cores", "format_rse_table", "load_config", "train_transfer",
           "weights_digest"]
