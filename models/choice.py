"""Which model of a package should transfer a system's spectra: the best on validation.

A package holds the paper's VAE + MLP and its baselines (one-step MLP, PLS, KNN, PDS). Which one
transfers best depends on the data: with a few hundred pairs a PLS may beat the networks (a
real near-infrared pair set did), with tens of thousands the networks win. The package itself
records every model's validation RSE (`metrics.validation_rse`, each on the validation map
that chose its epochs, components or k; PLS's is the score that chose its components, before
its refit on training + validation). The lowest of them names the model, so that `evaluate`
can say "use this one" and `transfer`, the Python API and the live view use it by default.

The mean spectrum is never recommended: it transfers nothing. The test map never takes part
(it stays unseen until evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: models a package may recommend, in the order that breaks a tie (the paper's model first:
#: it alone has a latent space behind its confidence)
CANDIDATES = ("vae_mlp", "one_step_mlp", "pls", "knn", "pds")


@dataclass(frozen=True)
class ModelChoice:
    """The recommended model of one system and the validation RSEs it was chosen from."""

    model: str
    validation_rse: dict[str, float]
    system: str

    @property
    def reason(self) -> str:
        ranked = sorted(self.validation_rse.items(), key=lambda kv: kv[1])
        listed = ", ".join(f"{name} {value:.4g}" for name, value in ranked)
        return f"lowest validation RSE of {self.system!r} ({listed})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "system": self.system, "by": "validation RSE",
                "validation_rse": dict(self.validation_rse), "reason": self.reason}


def system_validation_rse(manifest: dict[str, Any], system: str) -> dict[str, float]:
    """The validation RSE of each model of ``system`` as the package records it: a joined
    system's under ``metrics[system]``, the system trained with the VAE under ``metrics``."""
    metrics = manifest.get("metrics", {}) or {}
    joined = metrics.get(system)
    if isinstance(joined, dict) and isinstance(joined.get("validation_rse"), dict):
        scores = joined["validation_rse"]
    else:
        trained = (metrics.get("options") or {}).get("system")
        systems = list(manifest.get("secondary", {}) or {})
        if trained not in (None, system) or (trained is None and len(systems) > 1):
            return {}
        scores = metrics.get("validation_rse", {}) or {}
    return {str(k): float(v) for k, v in scores.items()
            if isinstance(v, (int, float)) and v == v}  # NaN != NaN: dropped


def recommended_model(manifest: dict[str, Any], system: str,
                      available: list[str] | tuple[str, ...]) -> ModelChoice:
    """The available candidate with the lowest recorded validation RSE; vae_mlp when the
    package records none (an older or hand-built package)."""
    scores = {name: value for name, value in system_validation_rse(manifest, system).items()
              if name in CANDIDATES and name in available}
    if not scores:
        return ModelChoice("vae_mlp", {}, system)
    best = min(scores, key=lambda name: (scores[name], CANDIDATES.index(name)))
    return ModelChoice(best, scores, system)


def model_to_use(choice: ModelChoice, available: list[str] | tuple[str, ...],
                 named: str | None) -> str:
    """The model named by the user (checked against what the system has), else the choice."""
    if named is None:
        return choice.model
    usable = [n for n in available if n != "mean"]
    if named == "mean":
        raise ValueError(f"the mean spectrum transfers nothing: choose one of {usable}")
    if named not in available:
        raise ValueError(f"the model package has no model {named!r} for system "
                         f"{choice.system!r}; it has {usable}")
    return named


__all__ = ["CANDIDATES", "ModelChoice", "model_to_use", "recommended_model",
           "system_validation_rse"]
