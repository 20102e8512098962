"""Training checkpoints: resume an interrupted `train_transfer` exactly where it stopped.

Layout of ``MODEL_DIR/checkpoints/`` (safetensors + JSON, never pickle):

``state.json``
    ``{"format": "plumelink.training_checkpoint", "version": 1, "fingerprint": {...},
    "stages": {stage: {...JSON record of a finished stage...}}, "epoch": {...} | null}``.
    ``fingerprint`` ties the checkpoint to the options and input files it was made with; a
    resume with anything else is refused. ``epoch`` describes the last finished epoch of the
    stage in progress: stage, epoch, optimiser step, best validation loss and epoch, history,
    the numpy Generator state, whether the stage decided to stop, optimiser hyperparameters.
``stage-<stage>.safetensors``
    weights of every module after a finished stage (``vae.*``, ``mlp.*``, ``one_step.*``).
``epoch.safetensors``
    the stage in progress after its last finished epoch: ``model.*`` (current weights),
    ``best.*`` (weights of the best validation epoch), ``optim.<i>.<key>`` (Adam moments and
    step of parameter i) and ``rng.torch`` (torch's CPU generator state) and, on a GPU,
    ``rng.cuda``.

Every file is written to a temporary name and renamed, ``state.json`` last, so a crash
mid-write leaves the previous checkpoint intact. Only rank 0 writes (data parallel).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from plumelink.models.files import atomic_write, read_weights

FORMAT = "plumelink.training_checkpoint"
VERSION = 1
STATE = "state.json"
EPOCH_FILE = "epoch.safetensors"


class CheckpointMismatchError(ValueError):
    """The checkpoint was made with other options or input files than the resumed run."""


def _atomic(path: Path, write: Any) -> None:
    """Temp file + rename, mode after the umask (the package's writer; no fsync: a lost
    checkpoint costs one interval of training, not data)."""
    atomic_write(path, write, fsync=False)


def _tensors(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _strip(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def optimiser_tensors(optimiser: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors 'optim.<param>.<key>', JSON-able param_groups) of an optimiser state."""
    sd = optimiser.state_dict()
    tensors = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{idx}.{key}"] = t.detach().cpu().contiguous().clone()
    return tensors, sd["param_groups"]


def load_optimiser(optimiser: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   param_groups: Any) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    optimiser.load_state_dict({"state": state, "param_groups": param_groups})


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two JSON-like dicts."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix or "(all)"]
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        out += _differences(a.get(key), b.get(key), f"{prefix}{key}" if not prefix
                            else f"{prefix}.{key}")
    return out


class Checkpointer:
    """Reads and writes ``folder`` (MODEL_DIR/checkpoints); writes only when ``writer``."""

    def __init__(self, folder: str | os.PathLike[str], fingerprint: dict[str, Any],
                 *, resume: bool, writer: bool = True, interval_s: float = 0.0):
        self.folder = Path(folder)
        self.writer = writer
        # an epoch of a small map takes a second while its checkpoint (weights, best weights,
        # Adam moments) is ~150 MB: save mid-stage epochs at most every interval_s
        self.interval_s = interval_s
        self._last_save = time.monotonic()
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.state: dict[str, Any] = {"format": FORMAT, "version": VERSION,
                                      "fingerprint": self.fingerprint, "stages": {},
                                      "epoch": None}
        if resume:
            path = self.folder / STATE
            if not path.is_file():
                raise FileNotFoundError(f"no checkpoint to resume from in {self.folder}")
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path} is not a training checkpoint (not JSON: {exc}); "
                                 f"start afresh without --resume") from None
            if not isinstance(saved, dict) or saved.get("format") != FORMAT \
                    or saved.get("version") != VERSION:
                raise ValueError(f"{path} is not a version-{VERSION} training checkpoint")
            if saved.get("fingerprint") != self.fingerprint:
                diff = _differences(saved.get("fingerprint", {}), self.fingerprint)
                raise CheckpointMismatchError(
                    f"checkpoint in {self.folder} was made with other settings or input files "
                    f"(differing: {', '.join(diff)}); start afresh without --resume")
            self.state = saved
        elif writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob("*"):
                if old.is_file() and (old.suffix in (".json", ".safetensors")):
                    old.unlink()

    # -- finished stages ---------------------------------------------------------------------

    def stage_done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def stage_record(self, stage: str) -> dict[str, Any]:
        return self.state["stages"][stage]

    def save_stage(self, stage: str, modules: dict[str, nn.Module], record: dict[str, Any]
                   ) -> None:
        self.state["stages"][stage] = json.loads(json.dumps(record))
        self.state["epoch"] = None
        if not self.writer:
            return
        tensors: dict[str, torch.Tensor] = {}
        for name, module in modules.items():
            tensors.update(_tensors(name, module.state_dict()))
        _atomic(self.folder / f"stage-{stage}.safetensors",
                lambda p: safetensors.torch.save_file(tensors, p))
        self._write_state()
        (self.folder / EPOCH_FILE).unlink(missing_ok=True)

    def load_stage(self, stage: str, modules: dict[str, nn.Module]) -> dict[str, Any]:
        tensors = read_weights(self.folder / f"stage-{stage}.safetensors",
                               safetensors.torch.load_file)
        for name, module in modules.items():
            module.load_state_dict(_strip(name, tensors))
        return self.stage_record(stage)

    # -- the stage in progress -----------------------------------------------------------------

    def epoch_state(self, stage: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """(JSON record, tensors) of the last finished epoch of `stage`, or None."""
        record = self.state.get("epoch")
        if not record or record.get("stage") != stage:
            return None
        tensors = read_weights(self.folder / EPOCH_FILE, safetensors.torch.load_file)
        return record, tensors

    def save_epoch(self, stage: str, record: dict[str, Any], model: nn.Module,
                   best_state: dict[str, torch.Tensor], optimiser: torch.optim.Optimizer
                   ) -> None:
        if not self.writer or time.monotonic() - self._last_save < self.interval_s:
            return
        opt_tensors, groups = optimiser_tensors(optimiser)
        tensors = {**_tensors("model", model.state_dict()), **_tensors("best", best_state),
                   **opt_tensors, "rng.torch": torch.get_rng_state().clone()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state().clone()
        _atomic(self.folder / EPOCH_FILE, lambda p: safetensors.torch.save_file(tensors, p))
        self.state["epoch"] = json.loads(json.dumps({**record, "stage": stage,
                                                     "param_groups": groups}))
        self._write_state()
        self._last_save = time.monotonic()

    def _write_state(self) -> None:
        text = json.dumps(self.state, indent=1)
        _atomic(self.folder / STATE, lambda p: Path(p).write_text(text, encoding="utf-8"))


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """JSON-able state of a numpy Generator (PCG64 ints are exact in JSON)."""
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state


__all__ = ["CheckpointMismatchError", "Checkpointer", "generator_state", "set_generator_state"]
