"""The training configuration: a few small tables, declared once (pydantic), loadable from TOML.

`TrainConfig` groups what `train_transfer` needs besides the data:

- ``data``: the scalers and how the maps are read (in memory or streamed);
- ``networks``: the architectures;
- ``fit``: what every network's training shares (epochs, Adam, early stopping, schedule, KL
  annealing of the VAE);
- ``fine_tune``, ``average``, ``baselines``: one table per optional stage;
- ``augment``: what is done to the secondary training spectra;
- ``run``: where and how this run executes (threads, device, checkpoints); never changes a
  weight, so a resumed run may change it.

A file holds the same tables (``[fit] epochs = 50``); `load_config` reads one. Every option also
has a flat name (``fine_tune_epochs``, ``drift_gain``...), which the command line, the GUI and
the manifests of older packages use: ``TrainConfig(epochs=2, fine_tune=False)`` puts each into
its table (`FLAT` says where). Unknown keys are refused; each error names the option.

Why the defaults are what they are: docs/transfer_experiments.md.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from plumelink.models.augment import DriftConfig, InputNoise

Schedule = Literal["constant", "cosine", "plateau"]


class ConfigError(ValueError):
    """A training configuration (keywords or a file) has an unknown key or a bad value."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Table):
    """The scalers (fitted on the training map) and how the maps are read."""

    scaler_mode: Literal["train", "per-map"] = "train"
    scaler_spread: Literal["global", "channel"] = "global"
    stream: bool | None = None  # None: stream maps of more than MAX_IN_MEMORY_SPOTS spots
    block_spots: int = Field(2048, ge=1)  # spots per streamed block (whole raster lines)
    shuffle_spots: int = Field(8192, ge=1)  # shuffle buffer of the streamed training data
    baseline_pairs: int = Field(10_000, ge=1)  # streaming: pairs the baselines are fitted on
    val_pairs: int = Field(10_000, ge=1)  # streaming: validation pairs held in memory


class NetworkConfig(_Table):
    """The architectures: the VAE, the latent MLP and the optional linear path."""

    vae_hidden: tuple[int, ...] = (1024, 512)
    latent: int = Field(64, ge=1)
    mlp_hidden: tuple[int, ...] = (128, 512)
    linear_rank: int = Field(64, ge=0)  # rank of the linear path from the secondary; 0: none

    @field_validator("vae_hidden", "mlp_hidden")
    @classmethod
    def _widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(v < 1 for v in value):
            raise ValueError(f"must be layer widths >= 1, got {list(value)}")
        return value


class LoopConfig(_Table):
    """What the training loop of every network shares (`fit.fit`)."""

    epochs: int = Field(200, ge=1)  # cap of every network's epochs
    learning_rate: float = Field(1e-3, gt=0, allow_inf_nan=False)
    batch_size: int = Field(128, ge=1)
    patience: int = Field(25, ge=1)
    weight_decay: float = Field(1e-5, ge=0, allow_inf_nan=False)
    schedule: Schedule = "plateau"
    min_lr_fraction: float = Field(0.01, gt=0, allow_inf_nan=False)  # cosine/plateau floor
    lr_decay_patience: int = Field(8, ge=1)  # plateau: epochs without a new best
    lr_decay_factor: float = Field(0.3, gt=0, allow_inf_nan=False)
    kl_max: float = Field(0.5, gt=0, allow_inf_nan=False)  # ceiling of the annealed KL weight
    kl_cycles: int = Field(4, ge=1)  # linear KL annealing cycles
    max_batches: int | None = Field(None, ge=1)  # cap of training batches per epoch


class FineTuneConfig(_Table):
    """The composed model (MLP + a copy of the decoder) tuned end to end, kept when better."""

    enabled: bool = True
    epochs: int = Field(100, ge=1)  # also capped by fit.epochs
    learning_rate: float = Field(3e-4, gt=0, allow_inf_nan=False)


class AverageConfig(_Table):
    """Weight averaging (SWA) after the fine-tuning and after the one-step MLP; 0 epochs: none."""

    epochs: int = Field(120, ge=0)  # also capped by fit.epochs
    learning_rate: float = Field(1e-4, gt=0, allow_inf_nan=False)


class BaselineConfig(_Table):
    """PLS and KNN (chosen on validation), PDS, the one-step MLP and the mean spectrum."""

    enabled: bool = True
    pls_candidates: tuple[int, ...] = (8, 16, 32)
    knn_candidates: tuple[int, ...] = (1, 3, 5, 10, 20)
    pds_half_window: int = Field(5, ge=0)
    # the paper's protocol: PLS's components are chosen on validation, then PLS is fitted
    # again on training + validation (the other baselines stay fitted on training only)
    pls_refit: bool = True

    @field_validator("pls_candidates", "knn_candidates")
    @classmethod
    def _candidates(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(v < 1 for v in value):
            raise ValueError(f"must be integers >= 1, got {list(value)}")
        return value


class AugmentConfig(_Table):
    """Drift and noise drawn for every secondary training spectrum of the latent MLP, the
    fine-tuning and the one-step MLP (`augment.SpectralDrift`, `augment.InputNoise`)."""

    drift_gain: float = Field(0.0, ge=0, allow_inf_nan=False)  # sd of the log gain
    drift_shift_px: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)  # largest shift
    drift_response: float = Field(0.0, ge=0, allow_inf_nan=False)  # sd of the Legendre terms
    input_noise: float = Field(0.05, ge=0, allow_inf_nan=False)  # sd, scaled secondary units

    @property
    def drift(self) -> DriftConfig:
        return DriftConfig(gain=self.drift_gain, shift_px=self.drift_shift_px,
                           response=self.drift_response)

    @property
    def noise(self) -> InputNoise:
        return InputNoise(self.input_noise)


class RunConfig(_Table):
    """Where and how a run executes; nothing here changes a weight (resume may differ)."""

    threads: int | None = Field(None, ge=1)  # torch threads; None: the free cores at the start
    device: str = "auto"  # auto (the GPU when available), cpu, cuda or cuda:N
    hash_inputs: bool = True  # sha256 of the input maps in the package (else size + mtime)
    overwrite: bool = False
    keep_checkpoints: bool = False  # keep OUT/checkpoints after the package is written
    checkpoint_interval_s: float = Field(60.0, ge=0, allow_inf_nan=False)  # 0: every epoch

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError(f"must be auto, cpu or cuda, got {value!r}")
        return value


_GROUPS: dict[str, type[_Table]] = {
    "data": DataConfig, "networks": NetworkConfig, "fit": LoopConfig,
    "fine_tune": FineTuneConfig, "average": AverageConfig, "baselines": BaselineConfig,
    "augment": AugmentConfig, "run": RunConfig,
}
_TOP = ("seed", "system", "deterministic")
_RENAMED = {  # flat name -> (table, field) where the field's name differs
    "fine_tune": ("fine_tune", "enabled"), "fine_tune_epochs": ("fine_tune", "epochs"),
    "fine_tune_learning_rate": ("fine_tune", "learning_rate"),
    "average_epochs": ("average", "epochs"), "average_learning_rate": ("average", "learning_rate"),
    "baselines": ("baselines", "enabled"),
}
#: every flat option name -> (table, field); the top-level fields map to ("", name)
FLAT: dict[str, tuple[str, str]] = {
    **{name: ("", name) for name in _TOP},
    **{name: (group, name) for group, table in _GROUPS.items() for name in table.model_fields
       if group not in ("fine_tune", "average") and name != "enabled"},
    **_RENAMED,
}
_FLAT_OF = {where: flat for flat, where in FLAT.items()}


class TrainConfig(BaseModel):
    """Everything `train_transfer` needs besides the data; printed into the package manifest.

    Built from tables (``TrainConfig(fit={"epochs": 2})``, a TOML file) or from flat option
    names (``TrainConfig(epochs=2)``), or both; `flat` gives the flat names back."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    seed: int = 0
    system: str = "secondary"  # name of the secondary system in the package
    deterministic: bool = True  # torch.use_deterministic_algorithms while training
    data: DataConfig = DataConfig()
    networks: NetworkConfig = NetworkConfig()
    fit: LoopConfig = LoopConfig()
    fine_tune: FineTuneConfig = FineTuneConfig()
    average: AverageConfig = AverageConfig()
    baselines: BaselineConfig = BaselineConfig()
    augment: AugmentConfig = AugmentConfig()
    run: RunConfig = RunConfig()

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**_nested(values))
        except ValidationError as e:
            raise ConfigError(_describe(e)) from None

    @classmethod
    def paper(cls, **changes: Any) -> TrainConfig:
        """The published settings (Vrábel et al. 2023): Adam 1e-4, 50 epochs, early stopping,
        per-map per-channel standard scaling, no fine-tuning. For reproduction: on the small
        simulated maps these underfit (docs/transfer_experiments.md)."""
        paper: dict[str, Any] = dict(
            epochs=50, learning_rate=1e-4, patience=10, weight_decay=1e-5,
            scaler_mode="per-map", scaler_spread="channel", fine_tune=False,
            schedule="constant", kl_max=0.5, kl_cycles=4, pls_candidates=(8, 16, 32),
            linear_rank=0, average_epochs=0, input_noise=0.0)
        paper.update(changes)
        return cls(**paper)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some options changed (flat names or tables), validated again."""
        return TrainConfig(**_merge(self.model_dump(), _nested(changes)))

    def capped(self, epochs: int) -> TrainConfig:
        """This config with every network's epochs at most `epochs` (the CLI's --epochs)."""
        return self.replace(epochs=int(epochs),
                            fine_tune_epochs=min(self.fine_tune.epochs, int(epochs)),
                            average_epochs=min(self.average.epochs, int(epochs)))

    def flat(self) -> dict[str, Any]:
        """Every option under its flat name (the manifest's ``metrics.options``)."""
        tables = self.model_dump()
        return {flat: tables[group][name] if group else tables[name]
                for flat, (group, name) in FLAT.items()}

    def tables(self) -> dict[str, Any]:
        """The tables as plain values, as a TOML file holds them (``seed`` etc. on top)."""
        return self.model_dump(mode="json")

    def weights_record(self) -> dict[str, Any]:
        """What the weights depend on (everything but ``run``): the checkpoints' fingerprint."""
        record = self.model_dump(mode="json")
        record.pop("run")
        return record


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """Flat option names moved into their tables; tables and unknown keys kept for pydantic."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in _GROUPS and isinstance(value, dict | BaseModel):
            table = value.model_dump() if isinstance(value, BaseModel) else _tuples(value)
            out[key] = _merge(out.get(key, {}), table)
        elif key in FLAT and FLAT[key][0]:
            group, name = FLAT[key]
            out.setdefault(group, {})
            if isinstance(out[group], dict):
                out[group][name] = _tuples(value)
        else:
            out[key] = value
    return out


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}
_WORDS = {"float_type": "must be a number", "finite_number": "must be a number",
          "int_type": "must be an integer", "int_from_float": "must be an integer",
          "bool_type": "must be true or false", "string_type": "must be a string",
          "tuple_type": "must be a list", "list_type": "must be a list",
          "dict_type": "must be a table", "model_type": "must be a table"}


def problems(error: ValidationError) -> list[tuple[str, str]]:
    """(dotted field, "must be >= 1, got 0") for each error, as the other config files word
    them (drivers.config; models may not import drivers)."""
    out = []
    for e in error.errors(include_url=False):
        loc = ".".join(str(part) for part in e["loc"])
        kind, got, ctx = e["type"], e.get("input"), e.get("ctx") or {}
        if kind == "missing":
            text = "is missing"
        elif kind in ("extra_forbidden", "unexpected_keyword_argument"):
            text = "is not a known key"
        elif kind in _BOUNDS:
            text = f"must be {_BOUNDS[kind]} {next(iter(ctx.values())):g}, got {got!r}"
        elif kind == "literal_error":
            text = f"must be one of {ctx['expected'].replace(' or ', ', ')}, got {got!r}"
        elif kind in _WORDS:
            text = f"{_WORDS[kind]}, got {got!r}"
        else:
            text = str(e["msg"]).removeprefix("Value error, ")
        out.append((loc, text))
    return out


def _describe(error: ValidationError) -> str:
    """'fine_tune_epochs (fine_tune.epochs) must be >= 1, got 0', one line per problem."""
    lines = []
    for dotted, text in problems(error):
        parts = tuple(dotted.split("."))[:2]
        flat = _FLAT_OF.get(parts if len(parts) == 2 else ("", parts[0]))
        name = dotted if flat is None or flat == dotted else f"{flat} ({dotted})"
        lines.append(f"training option {name} {text}")
    return "; ".join(lines)


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a training configuration file (TOML tables as in `TrainConfig`); ``overrides``
    (flat names, e.g. from command-line flags) win over the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read training config {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    data = {k: _tuples(v) for k, v in data.items()}
    try:
        config = TrainConfig(**data)
        return config.replace(**overrides) if overrides else config
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value


__all__ = ["FLAT", "AugmentConfig", "AverageConfig", "BaselineConfig",
           "ConfigError", "DataConfig", "FineTuneConfig", "LoopConfig", "NetworkConfig",
           "RunConfig", "TrainConfig", "load_config"]
