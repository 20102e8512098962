"""A model package: a folder of safetensors weights and a JSON manifest (never pickle).

Layout of a package folder::

    manifest.json                          written last (temp file + rename)
    vae.safetensors                        the primary model (shared latent space)
    latent_mlp-<system>.safetensors        one per secondary system
    decoder-<system>.safetensors           optional: the system's fine-tuned copy of the decoder
    one_step_mlp-<system>.safetensors      optional one-step MLP baseline
    baseline-<name>-<system>.safetensors   optional numpy-state baselines (PLS, KNN, PDS, mean)

The manifest holds the architectures (each network's ``config()``), the wavelength axes of
the primary and of every secondary system, the scalers (``SpectralScaler.to_dict``), the
preprocessing parameters, the training-data fingerprint, metrics, training histories, the
package versions and the sha256 of every weight file. A new secondary system joins an
existing package with `add_secondary`, which trains nothing and leaves ``vae.safetensors``
untouched: the paper's shared latent space.

Loading uses ``safetensors.torch.load_file`` / ``safetensors.numpy.load_file`` only (nothing is
ever unpickled), checks each file's sha256, its safetensors layout (a truncated, garbled or
replaced file is refused as a PackageError naming the file and the problem), every tensor's
shape and dtype against the architecture and that every weight is finite; `check_data`
explains in words how a map's wavelength axes differ from the model's.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from plumelink.models.baselines import KNNModel, MeanPredictor, PDSModel, PLSModel
from plumelink.models.files import WeightFileError, atomic_write, read_weights
from plumelink.models.networks import VAE, ComposedTransfer, LatentMLP, OneStepMLP, SystemDecoder
from plumelink.models.training.config import problems
from plumelink.pipeline.preprocess import Preprocessor, SpectralScaler

FORMAT = "plumelink.model_package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VAE_FILE = "vae.safetensors"
DEFAULT_TOLERANCE_NM = 1e-3

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.]*$")


class PackageError(ValueError):
    """A package folder is incomplete, corrupt or inconsistent with its manifest."""


class PackageMismatchError(ValueError):
    """Data do not match the model package (wavelength axes, pixel counts, system)."""


@dataclass
class ModelPackage:
    """Everything `load_package` rebuilds from a package folder (networks in eval mode)."""

    folder: Path
    manifest: dict[str, Any]
    vae: VAE
    latent_mlps: dict[str, LatentMLP]
    scalers: dict[str, SpectralScaler]  # "primary" and one per secondary system
    primary_wavelength_nm: np.ndarray
    secondary_wavelength_nm: dict[str, np.ndarray]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> name -> model
    one_step: dict[str, OneStepMLP] = field(default_factory=dict)  # system -> model
    decoders: dict[str, SystemDecoder] = field(default_factory=dict)  # system -> fine-tuned

    @property
    def systems(self) -> list[str]:
        return sorted(self.latent_mlps)

    def preprocessor(self, system: str) -> Preprocessor:
        """Raw counts of `system` to network inputs and outputs back to primary spectra: the
        package's baseline parameters (manifest ``preprocessing``) with the primary scaler
        and the system's own."""
        if system not in self.latent_mlps:
            raise PackageMismatchError(_unknown_system(system, self.systems))
        try:
            return Preprocessor.from_dict(self.manifest.get("preprocessing"),
                                          self.scalers["primary"], self.scalers[system])
        except ValueError as e:
            raise PackageError(f"{self.folder / MANIFEST}: {e}") from e

    def composed(self, system: str) -> ComposedTransfer:
        """Latent MLP of `system` followed by its fine-tuned decoder when it has one, else the
        shared VAE decoder; in eval mode."""
        if system not in self.latent_mlps:
            raise PackageMismatchError(_unknown_system(system, self.systems))
        return ComposedTransfer(self.latent_mlps[system], self.vae,
                                self.decoders.get(system)).eval()


# -- helpers ---------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    return {
        "plumelink": _version("plumelink"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": getattr(safetensors, "__version__", _version("safetensors")),
        "python": platform.python_version(),
    }


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{what} name {name!r} cannot name a file: use letters, digits, '_' and '.'"
        )
    return name


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, non-finite floats to None."""
    if hasattr(obj, "as_dict") and callable(obj.as_dict):
        return _jsonable(obj.as_dict())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _axis(values: Any, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size < 2 or not np.isfinite(a).all():
        raise ValueError(f"{what} must be a 1-D array of at least 2 finite wavelengths")
    return a


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, hex (every file hash of plumelink.models)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _save_module(folder: Path, name: str, module: nn.Module) -> dict[str, Any]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(folder / name, lambda p: safetensors.torch.save_file(tensors, p))
    return {"file": name, "config": module.config()}  # type: ignore[operator]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Module(_Entry):
    file: str
    config: dict[str, Any]


class _BaselineFile(_Entry):
    file: str
    kind: str
    params: dict[str, Any] = {}


class _Primary(_Entry):
    wavelength_nm: list[float]
    scaler: dict[str, Any]
    vae: _Module


class _Secondary(_Entry):
    wavelength_nm: list[float]
    scaler: dict[str, Any]
    latent_mlp: _Module
    one_step_mlp: _Module | None = None
    decoder: _Module | None = None
    baselines: dict[str, _BaselineFile] = {}
    added: str | None = None
    versions: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None


class _FileRecord(_Entry):
    sha256: str
    bytes: int


class _Manifest(_Entry):
    """The structure of manifest.json, checked when a package is read (unknown keys refused;
    metrics, histories and fingerprints are free-form records)."""

    format: str
    format_version: int
    created: str | None = None
    versions: dict[str, Any] = {}
    primary: _Primary
    secondary: dict[str, _Secondary]
    preprocessing: dict[str, Any] = {}
    fingerprint: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    histories: dict[str, Any] = {}
    files: dict[str, _FileRecord] = {}


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise PackageError(f"{folder} is not a model package: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise PackageError(f"{path} is not a model package manifest (not a JSON object)")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(
            f"{path} is not a version-{FORMAT_VERSION} {FORMAT} manifest "
            f"(format={manifest.get('format')!r}, version={manifest.get('format_version')!r})"
        )
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as e:
        found = "; ".join(f"{loc} {text}" for loc, text in problems(e)[:3])
        raise PackageError(f"{path} is not a valid model package manifest: {found}") from None
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Record the sha256 of every referenced weight file, then write the manifest last."""
    files: dict[str, dict[str, Any]] = {}
    for name in _referenced_files(manifest):
        path = folder / name
        files[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    manifest["files"] = files
    text = json.dumps(_jsonable(manifest), indent=1, allow_nan=False)
    atomic_write(folder / MANIFEST, lambda p: Path(p).write_text(text, encoding="utf-8"))


def _referenced_files(manifest: dict[str, Any]) -> list[str]:
    names = [manifest["primary"]["vae"]["file"]]
    for entry in manifest["secondary"].values():
        names.append(entry["latent_mlp"]["file"])
        if entry.get("one_step_mlp"):
            names.append(entry["one_step_mlp"]["file"])
        if entry.get("decoder"):
            names.append(entry["decoder"]["file"])
        names.extend(b["file"] for b in entry.get("baselines", {}).values())
    return names


# -- baselines -------------------------------------------------------------------------------


def _baseline_kind_params(model: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(model, MeanPredictor):
        return "mean", {}
    if isinstance(model, PLSModel):
        return "pls", {"n_components": model.n_components}
    if isinstance(model, KNNModel):
        return "knn", {"k": model.k}
    if isinstance(model, PDSModel):
        return "pds", {"half_window": model.half_window, "ridge": model.ridge,
                       "global_components": model.global_components}
    raise TypeError(f"cannot store a baseline of type {type(model).__name__}")


def _baseline_arrays(kind: str, model: Any) -> dict[str, np.ndarray]:
    state = dict(model.state())
    if kind == "pds":
        state["primary_nm"] = model.primary_nm
        state["secondary_nm"] = model.secondary_nm
    missing = [k for k, v in state.items() if v is None and not k.startswith("global_")]
    if missing:
        raise ValueError(f"{kind} baseline is not fitted (no {', '.join(missing)})")
    return {k: np.ascontiguousarray(v) for k, v in state.items() if v is not None}


def _expect(cond: bool, file: str, what: str) -> None:
    if not cond:
        raise PackageError(f"{file}: {what}")


def _rebuild_baseline(kind: str, params: dict[str, Any], arrays: dict[str, np.ndarray],
                      file: str, n_primary: int, n_secondary: int) -> Any:
    required = {"mean": ["mean"], "pls": ["coef", "intercept"], "knn": ["train_x", "train_y"],
                "pds": ["weights", "window_start", "inside", "primary_nm", "secondary_nm"]}
    if kind not in required:
        raise PackageError(f"{file}: unknown baseline kind {kind!r}")
    absent = [k for k in required[kind] if k not in arrays]
    _expect(not absent, file, f"missing tensors {absent} for a {kind} baseline")
    if kind == "mean":
        _expect(arrays["mean"].shape == (n_primary,), file,
                f"mean has shape {arrays['mean'].shape}, the primary axis has {n_primary} pixels")
        return MeanPredictor(mean=arrays["mean"])
    if kind == "pls":
        model = PLSModel(int(params["n_components"]))
        coef, intercept = arrays["coef"], arrays["intercept"]
        _expect(coef.shape == (n_secondary, n_primary) and intercept.shape == (n_primary,), file,
                f"PLS coef {coef.shape} / intercept {intercept.shape} do not map "
                f"{n_secondary} secondary to {n_primary} primary pixels")
        model.coef, model.intercept = coef, intercept
        return model
    if kind == "knn":
        tx, ty = arrays["train_x"], arrays["train_y"]
        _expect(tx.ndim == 2 and ty.ndim == 2 and tx.shape[0] == ty.shape[0]
                and tx.shape[1] == n_secondary and ty.shape[1] == n_primary, file,
                f"KNN train_x {tx.shape} / train_y {ty.shape} do not pair "
                f"{n_secondary}-pixel secondary with {n_primary}-pixel primary spectra")
        return KNNModel(int(params["k"])).fit(tx, ty)  # refit the index: no pickle
    model = PDSModel(arrays["primary_nm"], arrays["secondary_nm"], int(params["half_window"]),
                     float(params["ridge"]), int(params["global_components"]))
    inside = arrays["inside"].astype(bool)
    weights = arrays["weights"]
    _expect(inside.shape == (n_primary,) and arrays["window_start"].shape == (n_primary,)
            and weights.shape == (int(inside.sum()), 2 * model.half_window + 2), file,
            f"PDS weights {weights.shape} / inside {inside.shape} do not fit "
            f"{n_primary} primary pixels and half window {model.half_window}")
    model.inside, model.window_start, model.weights = inside, arrays["window_start"], weights
    if (~inside).any():
        _expect("global_coef" in arrays and "global_intercept" in arrays, file,
                "PDS global model missing although some primary pixels are outside the overlap")
        model.global_model.coef = arrays["global_coef"]
        model.global_model.intercept = arrays["global_intercept"]
    return model


def _normalise_per_system(value: Any, systems: list[str], what: str,
                          leaf: type | None = None) -> dict[str, Any]:
    """Accept {system: x} or, with exactly one secondary system, a bare x."""
    if value is None:
        return {}
    is_leaf = isinstance(value, leaf) if leaf is not None else (
        isinstance(value, Mapping) and not all(isinstance(v, Mapping) for v in value.values()))
    if is_leaf:
        if len(systems) != 1:
            raise ValueError(f"{what}: give a dict keyed by secondary system ({systems})")
        return {systems[0]: value}
    out = dict(value)
    unknown = sorted(set(out) - set(systems))
    if unknown:
        raise ValueError(f"{what} for unknown secondary systems {unknown}; known: {systems}")
    return out


# -- saving ----------------------------------------------------------------------------------


def _validate_secondary(system: str, mlp: LatentMLP, axis: np.ndarray, vae: VAE,
                        one_step: OneStepMLP | None, baselines: Mapping[str, Any] | None,
                        decoder: SystemDecoder | None = None) -> None:
    """Everything that can be wrong with one system's inputs, checked before any file is written."""
    if decoder is not None and (not isinstance(decoder, SystemDecoder)
                                or decoder.latent != vae.latent
                                or decoder.n_pixels != vae.n_pixels):
        raise ValueError(f"decoder of {system!r} must be a SystemDecoder mapping "
                         f"{vae.latent} latent dimensions to {vae.n_pixels} pixels")
    if decoder is not None and decoder.path is not None and decoder.path.n_in != axis.size:
        raise ValueError(f"the linear path of {system!r}'s decoder takes {decoder.path.n_in} "
                         f"pixels, its wavelength axis has {axis.size}")
    _check_name("secondary system", system)
    if not isinstance(mlp, LatentMLP):
        raise TypeError(f"latent MLP of {system!r} is a {type(mlp).__name__}, not a LatentMLP")
    if mlp.latent != vae.latent:
        raise ValueError(f"latent MLP of {system!r} outputs {mlp.latent} latent dimensions, "
                         f"the VAE has {vae.latent}")
    if mlp.n_pixels != axis.size:
        raise ValueError(f"latent MLP of {system!r} takes {mlp.n_pixels} pixels, its "
                         f"wavelength axis has {axis.size}")
    if one_step is not None and (one_step.n_in != axis.size or one_step.n_out != vae.n_pixels):
        raise ValueError(f"one-step MLP of {system!r} maps {one_step.n_in} -> "
                         f"{one_step.n_out} pixels, expected {axis.size} -> {vae.n_pixels}")
    for name, model in (baselines or {}).items():
        _check_name("baseline", name)
        _baseline_arrays(_baseline_kind_params(model)[0], model)


def _secondary_entry(folder: Path, system: str, mlp: LatentMLP, axis: np.ndarray,
                     scaler: SpectralScaler, vae: VAE, one_step: OneStepMLP | None,
                     baselines: Mapping[str, Any] | None,
                     decoder: SystemDecoder | None = None) -> dict[str, Any]:
    _validate_secondary(system, mlp, axis, vae, one_step, baselines, decoder)
    entry: dict[str, Any] = {
        "wavelength_nm": axis.tolist(),
        "scaler": scaler.to_dict(),
        "latent_mlp": _save_module(folder, f"latent_mlp-{system}.safetensors", mlp),
        "one_step_mlp": None,
        "decoder": None,
        "baselines": {},
    }
    if decoder is not None:
        entry["decoder"] = _save_module(folder, f"decoder-{system}.safetensors", decoder)
    if one_step is not None:
        entry["one_step_mlp"] = _save_module(folder, f"one_step_mlp-{system}.safetensors",
                                             one_step)
    for name, model in (baselines or {}).items():
        kind, params = _baseline_kind_params(model)
        arrays = _baseline_arrays(kind, model)
        file = f"baseline-{name}-{system}.safetensors"
        atomic_write(folder / file, lambda p, a=arrays: safetensors.numpy.save_file(a, p))
        entry["baselines"][name] = {"file": file, "kind": kind, "params": params}
    return entry


def save_package(
    folder: str | os.PathLike[str],
    *,
    vae: VAE,
    latent_mlps: Mapping[str, LatentMLP],
    primary_wavelength_nm: Any,
    secondary_wavelength_nm: Mapping[str, Any],
    scalers: Mapping[str, SpectralScaler],
    preprocessing: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    baselines: Mapping[str, Any] | None = None,
    one_step: OneStepMLP | Mapping[str, OneStepMLP] | None = None,
    metrics: Mapping[str, Any] | None = None,
    histories: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    decoders: Mapping[str, SystemDecoder] | None = None,
) -> Path:
    """Write a model package to `folder`; return the manifest path.

    `baselines` is {system: {name: model}} or, with one secondary system, {name: model};
    `one_step` is {system: OneStepMLP} or, with one secondary system, a bare OneStepMLP.
    `decoders` is {system: SystemDecoder}: a system's fine-tuned decoder (the VAE's stays).
    Weight files are written first (each via temp file + rename), the manifest last, so a
    crash never leaves a manifest pointing at missing files. An existing package is only
    replaced with overwrite=True; weight files it listed that the new one does not are removed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = None
    if (folder / MANIFEST).exists():
        if not overwrite:
            raise FileExistsError(f"{folder} already holds a model package (overwrite=True)")
        try:
            old = _read_manifest(folder)
        except PackageError:
            old = None
    if not isinstance(vae, VAE):
        raise TypeError(f"vae is a {type(vae).__name__}, not a VAE")
    systems = sorted(latent_mlps)
    if not systems:
        raise ValueError("a package needs at least one secondary system's latent MLP")
    missing = [s for s in systems if s not in secondary_wavelength_nm]
    missing += [s for s in ["primary", *systems] if s not in scalers]
    if missing:
        raise ValueError(f"no wavelength axis or scaler for {sorted(set(missing))}")
    primary_axis = _axis(primary_wavelength_nm, "primary_wavelength_nm")
    if vae.n_pixels != primary_axis.size:
        raise ValueError(f"the VAE takes {vae.n_pixels} pixels, the primary wavelength axis "
                         f"has {primary_axis.size}")
    one_steps = _normalise_per_system(one_step, systems, "one_step", OneStepMLP)
    base = _normalise_per_system(baselines, systems, "baselines")
    own = _normalise_per_system(decoders, systems, "decoders", SystemDecoder)
    axes = {s: _axis(secondary_wavelength_nm[s], f"axis of {s!r}") for s in systems}
    for s in systems:  # validate everything before the first file is written
        _validate_secondary(s, latent_mlps[s], axes[s], vae, one_steps.get(s), base.get(s),
                            own.get(s))

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _now(),
        "versions": _versions(),
        "primary": {
            "wavelength_nm": primary_axis.tolist(),
            "scaler": scalers["primary"].to_dict(),
            "vae": _save_module(folder, VAE_FILE, vae),
        },
        "secondary": {},
        "preprocessing": dict(preprocessing),
        "fingerprint": dict(fingerprint),
        "metrics": dict(metrics or {}),
        "histories": dict(histories or {}),
    }
    for s in systems:
        entry = _secondary_entry(
            folder, s, latent_mlps[s], axes[s], scalers[s], vae, one_steps.get(s), base.get(s),
            own.get(s))
        entry["added"] = manifest["created"]
        manifest["secondary"][s] = entry
    _write_manifest(folder, manifest)
    if old is not None:
        keep = set(_referenced_files(manifest))
        for name in set(old.get("files", {})) - keep:
            if _NAME.match(name.replace("-", "_")):  # only plain names inside the folder
                (folder / name).unlink(missing_ok=True)
    return folder / MANIFEST


def add_secondary(
    folder: str | os.PathLike[str],
    system: str,
    mlp: LatentMLP,
    secondary_wavelength_nm: Any,
    scaler: SpectralScaler,
    *,
    one_step: OneStepMLP | None = None,
    baselines: Mapping[str, Any] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    history: Any = None,
    replace: bool = False,
    decoder: SystemDecoder | None = None,
) -> Path:
    """Add one secondary system's latent MLP (and optional baselines) to an existing package.

    The VAE file is neither rewritten nor touched: the new system shares the primary model's
    latent space. A decoder fine-tuned for the new system (`decoder`) is its own file.
    Its fingerprint/metrics/history are stored in its own manifest entry (and
    under metrics[system] / histories[system]). The manifest is rewritten last, atomically.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    _check_name("secondary system", system)
    if system in manifest["secondary"] and not replace:
        raise ValueError(f"the package already has a secondary system {system!r} "
                         f"(replace=True to retrain it)")
    vae_cfg = manifest["primary"]["vae"]["config"]
    _verify_file(folder, manifest, manifest["primary"]["vae"]["file"])
    vae_stub = VAE.__new__(VAE)  # only the sizes are needed to validate the new MLP
    vae_stub.n_pixels, vae_stub.latent = int(vae_cfg["n_pixels"]), int(vae_cfg["latent"])
    axis = _axis(secondary_wavelength_nm, f"axis of {system!r}")
    _validate_secondary(system, mlp, axis, vae_stub, one_step, baselines, decoder)
    entry = _secondary_entry(folder, system, mlp, axis, scaler, vae_stub, one_step, baselines,
                             decoder)
    entry["added"] = _now()
    entry["versions"] = _versions()
    if fingerprint is not None:
        entry["fingerprint"] = dict(fingerprint)
    old_entry = manifest["secondary"].get(system)
    manifest["secondary"][system] = entry
    if metrics is not None:
        manifest.setdefault("metrics", {})[system] = dict(metrics)
    if history is not None:
        manifest.setdefault("histories", {})[system] = history
    _write_manifest(folder, manifest)
    if old_entry is not None:
        stale = {b["file"] for b in old_entry.get("baselines", {}).values()}
        for key in ("one_step_mlp", "decoder"):
            if old_entry.get(key):
                stale.add(old_entry[key]["file"])
        for name in stale - set(_referenced_files(manifest)):
            (folder / name).unlink(missing_ok=True)
    return folder / MANIFEST


# -- loading ---------------------------------------------------------------------------------


def _verify_file(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
        raise PackageError(f"{MANIFEST} names a weight file outside the package: {name!r}")
    record = manifest.get("files", {}).get(name)
    path = folder / name
    if record is None:
        raise PackageError(f"{MANIFEST} refers to {name} but has no checksum for it")
    if not path.is_file():
        raise PackageError(f"weight file {name} listed in {MANIFEST} is missing from {folder}")
    digest = file_sha256(path)
    if digest != record["sha256"]:
        raise PackageError(
            f"weight file {name} is corrupt or was changed after saving: sha256 {digest[:12]}… "
            f"differs from the manifest's {record['sha256'][:12]}…"
        )
    return path


def _read_weights(path: Path, load: Any) -> dict[str, Any]:
    """`files.read_weights` with its refusal as a PackageError (same words)."""
    try:
        return read_weights(path, load)
    except WeightFileError as e:
        raise PackageError(str(e)) from None


def _check_finite(path: Path, tensors: Mapping[str, Any]) -> None:
    """A garbled weight file whose layout still holds together usually shows as NaN or inf."""
    for name, t in tensors.items():
        values = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise PackageError(f"weight file {path}: tensor {name} holds {bad} NaN or inf "
                               f"values (garbled?)")


def _build_module(cfg: dict[str, Any], file: str) -> nn.Module:
    kind = cfg.get("kind")
    try:
        if kind == "vae":
            return VAE(cfg["n_pixels"], cfg["hidden"], cfg["latent"])
        if kind == "latent_mlp":
            return LatentMLP(cfg["n_pixels"], cfg["hidden"], cfg["latent"])
        if kind == "one_step_mlp":
            sizes = [int(s) for s in cfg["sizes"]]
            if len(sizes) < 3:
                raise ValueError(f"sizes {sizes} too short")
            return OneStepMLP(sizes[0], sizes[-1], sizes[1:-2], sizes[-2], (),
                              path_rank=int(cfg.get("path_rank", 0)))
        if kind == "decoder":
            return SystemDecoder([int(s) for s in cfg["sizes"]], int(cfg.get("path_inputs", 0)),
                                 int(cfg.get("path_rank", 0)))
    except (KeyError, TypeError, ValueError) as e:
        raise PackageError(f"{file}: invalid architecture {cfg!r} in {MANIFEST}: {e}") from e
    raise PackageError(f"{file}: unknown network kind {kind!r} in {MANIFEST}")


def _load_module(folder: Path, manifest: dict[str, Any], record: dict[str, Any]) -> nn.Module:
    file = record["file"]
    path = _verify_file(folder, manifest, file)
    module = _build_module(record["config"], file)
    tensors = _read_weights(path, safetensors.torch.load_file)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise PackageError(f"{path} does not match its architecture {record['config']}: "
                           f"missing tensors {missing}, unexpected tensors {extra}")
    wrong = [f"tensor {k} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}"
             for k, v in expected.items() if tensors[k].shape != v.shape]
    wrong += [f"tensor {k} is {tensors[k].dtype}, expected {v.dtype}"
              for k, v in expected.items()
              if tensors[k].shape == v.shape and tensors[k].dtype != v.dtype]
    if wrong:
        raise PackageError(f"{path} does not match its architecture {record['config']}: "
                           + "; ".join(wrong))
    _check_finite(path, tensors)
    module.load_state_dict(tensors)
    return module.eval()


def load_package(folder: str | os.PathLike[str]) -> ModelPackage:
    """Rebuild a package: sha256 of every file, shapes against the manifest's architectures."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    for name in _referenced_files(manifest):
        _verify_file(folder, manifest, name)
    primary_axis = _axis(manifest["primary"]["wavelength_nm"], "primary axis in the manifest")
    vae = _load_module(folder, manifest, manifest["primary"]["vae"])
    assert isinstance(vae, VAE)
    if vae.n_pixels != primary_axis.size:
        raise PackageError(f"the VAE takes {vae.n_pixels} pixels, the manifest's primary axis "
                           f"has {primary_axis.size}")
    scalers = {"primary": SpectralScaler.from_dict(manifest["primary"]["scaler"])}
    mlps: dict[str, LatentMLP] = {}
    axes: dict[str, np.ndarray] = {}
    one_step: dict[str, OneStepMLP] = {}
    decoders: dict[str, SystemDecoder] = {}
    baselines: dict[str, dict[str, Any]] = {}
    for system, entry in manifest["secondary"].items():
        axis = _axis(entry["wavelength_nm"], f"axis of {system!r} in the manifest")
        mlp = _load_module(folder, manifest, entry["latent_mlp"])
        assert isinstance(mlp, LatentMLP)
        if mlp.n_pixels != axis.size or mlp.latent != vae.latent:
            raise PackageError(
                f"{entry['latent_mlp']['file']}: the MLP maps {mlp.n_pixels} pixels to "
                f"{mlp.latent} latent dimensions; expected {axis.size} -> {vae.latent}")
        mlps[system], axes[system] = mlp, axis
        scalers[system] = SpectralScaler.from_dict(entry["scaler"])
        if entry.get("one_step_mlp"):
            net = _load_module(folder, manifest, entry["one_step_mlp"])
            assert isinstance(net, OneStepMLP)
            one_step[system] = net
        if entry.get("decoder"):
            dec = _load_module(folder, manifest, entry["decoder"])
            assert isinstance(dec, SystemDecoder)
            if dec.latent != vae.latent or dec.n_pixels != vae.n_pixels:
                raise PackageError(
                    f"{entry['decoder']['file']}: the decoder maps {dec.latent} -> "
                    f"{dec.n_pixels}; expected {vae.latent} -> {vae.n_pixels}")
            decoders[system] = dec
        for name, rec in entry.get("baselines", {}).items():
            path = _verify_file(folder, manifest, rec["file"])
            arrays = _read_weights(path, safetensors.numpy.load_file)
            _check_finite(path, arrays)
            baselines.setdefault(system, {})[name] = _rebuild_baseline(
                rec["kind"], rec.get("params", {}), arrays, str(path), vae.n_pixels,
                axis.size)
    return ModelPackage(folder=folder, manifest=manifest, vae=vae, latent_mlps=mlps,
                        scalers=scalers, primary_wavelength_nm=primary_axis,
                        secondary_wavelength_nm=axes, baselines=baselines, one_step=one_step,
                        decoders=decoders)


# -- checking data against a package ---------------------------------------------------------


def _unknown_system(system: str, known: list[str]) -> str:
    return (f"the model package has no secondary system {system!r}; it has "
            f"{', '.join(repr(s) for s in known) or 'none'}")


def _compare_axis(label: str, model: np.ndarray, data: Any, tolerance_nm: float) -> str | None:
    data = np.asarray(data, dtype=np.float64).ravel()
    if data.size != model.size:
        return (f"the model's {label} axis has {model.size} pixels, this map's has {data.size} "
                f"(model {model[0]:.3f}–{model[-1]:.3f} nm"
                + (f", map {data[0]:.3f}–{data[-1]:.3f} nm)" if data.size else ")"))
    diff = np.abs(data - model)
    if not np.isfinite(diff).all():
        return f"this map's {label} axis contains non-finite wavelengths"
    worst = int(np.argmax(diff))
    if diff[worst] > tolerance_nm:
        n_bad = int((diff > tolerance_nm).sum())
        return (f"the {label} axis differs from the model's by up to {diff[worst]:.4g} nm "
                f"(pixel {worst}: model {model[worst]:.4f} nm, map {data[worst]:.4f} nm); "
                f"{n_bad} of {model.size} pixels differ by more than {tolerance_nm:g} nm")
    return None


def check_data(package: ModelPackage, system: str, primary_wavelength_nm: Any = None,
               secondary_wavelength_nm: Any = None, *,
               tolerance_nm: float = DEFAULT_TOLERANCE_NM) -> None:
    """Raise PackageMismatchError explaining in words how data differ from the package."""
    if system not in package.secondary_wavelength_nm:
        raise PackageMismatchError(_unknown_system(system, package.systems))
    problems = []
    if primary_wavelength_nm is not None:
        problems.append(_compare_axis("primary", package.primary_wavelength_nm,
                                      primary_wavelength_nm, tolerance_nm))
    if secondary_wavelength_nm is not None:
        problems.append(_compare_axis(f"secondary ({system})",
                                      package.secondary_wavelength_nm[system],
                                      secondary_wavelength_nm, tolerance_nm))
    found = [p for p in problems if p]
    if found:
        raise PackageMismatchError("data do not match the model package: " + "; ".join(found))
