"""A granitic pegmatite sample: grains of minerals at every (x, y) in µm.

The grain map is procedural and unbounded (Worley cells on a warped plane), so any
position maps to a composition without storing an image, deterministically for a seed.
Two grain populations give the 0.1–2 mm spread of pegmatite textures: coarse crystals of
quartz, feldspars and micas, and fine-grained aplitic patches and inclusions where the
minor phases (garnet, beryl, columbite–tantalite, microlite) concentrate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from .tables import element_table, minerals

# name, end-members (mineral table names), relative ablation yield at 266 nm. Transparent
# quartz and feldspars couple poorly to the UV pulse; Fe-, Mn-, Nb/Ta-bearing phases and micas
# absorb and ablate more, which is what makes grains stand out in total-emissivity maps.
# Solid solutions mix two end-members with a per-grain fraction.
PHASES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("quartz", ("quartz",), 0.45),
    ("albite", ("albite",), 0.7),
    ("K-feldspar", ("K-feldspar (microcline)",), 0.75),
    ("muscovite", ("muscovite",), 1.3),
    ("lepidolite", ("lepidolite (trilithionite end-member)",
                    "lepidolite (polylithionite end-member)"), 1.3),
    ("garnet", ("almandine", "spessartine"), 1.5),
    ("beryl", ("beryl",), 0.6),
    ("columbite-tantalite", ("columbite-(Fe)", "tantalite-(Mn)"), 1.6),
    ("microlite", ("microlite (fluorcalciomicrolite-type)",), 1.3),
)
MINERAL_NAMES: tuple[str, ...] = tuple(p[0] for p in PHASES)
# Phases whose trace contents the mineral table lists under another name.
TRACE_SOURCE = {"garnet": "garnet Alm50Sps50"}

# Modal proportions of the two grain populations (same order as PHASES).
COARSE_MODES = np.array([0.30, 0.25, 0.14, 0.19, 0.03, 0.04, 0.05, 0.0, 0.0])
FINE_MODES = np.array([0.14, 0.36, 0.0, 0.12, 0.04, 0.13, 0.07, 0.09, 0.05])

COARSE_SPACING_UM = 1000.0
FINE_SPACING_UM = 190.0
WARP_AMPLITUDE_UM = {"coarse": 380.0, "fine": 55.0}
FINE_PATCH_FRACTION = 0.22  # area of aplitic patches
INCLUSION_PROBABILITY = 0.06  # fine grains that sit inside coarse crystals
SPOT_DIAMETER_UM = 30.0

# Train, validation and test maps of the paper come from three separate regions of one
# sample; these are their origins in µm (each region is ~20 mm wide).
REGION_ORIGINS_UM = {"train": (0.0, 0.0), "val": (22000.0, 0.0), "test": (0.0, 22000.0)}


def _mix(*keys: np.ndarray) -> np.ndarray:
    """splitmix64 of combined integer keys: a stateless, vectorised random source."""
    h = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for k in keys:
            h = (h ^ np.asarray(k).astype(np.int64).astype(np.uint64)) * np.uint64(
                0xBF58476D1CE4E5B9
            )
            h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(29))
    return h


def _uniform(*keys: np.ndarray) -> np.ndarray:
    return (_mix(*keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class SpotMaterial:
    """What one ablation spot removes: a (possibly mixed) composition."""

    composition_wt_pct: np.ndarray  # (n, n_elements)
    mass_factor: np.ndarray  # (n,) relative ablated mass (density x ablation yield)
    mineral: np.ndarray  # (n,) int16 index into MINERAL_NAMES, phase with most weight
    mixed: np.ndarray  # (n,) bool, spot straddles a grain boundary


class PegmatiteSample:
    """Deterministic grain map of a pegmatite for a given seed."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 1])
        # Smooth warp fields: a few plane waves per layer and axis.
        self._warp = {
            layer: (
                rng.uniform(1 / 3200.0, 1 / 900.0, size=(2, 5))
                * np.exp(1j * rng.uniform(0, 2 * np.pi, size=(2, 5))),
                rng.uniform(0, 2 * np.pi, size=(2, 5)),
            )
            for layer in ("coarse", "fine", "patch")
        }
        self._compositions = self._end_member_table()
        self._density = np.array(
            [np.mean([minerals()[m].density_g_cm3 for m in members]) for _, members, _ in PHASES]
        )
        self._yield = np.array([p[2] for p in PHASES])

    # ----- geometry ------------------------------------------------------------------
    def _field(self, layer: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        freqs, phases = self._warp[layer]
        out = []
        for axis in range(2):
            f = freqs[axis]
            arg = 2 * np.pi * (np.multiply.outer(x, f.real) + np.multiply.outer(y, f.imag))
            out.append(np.sin(arg + phases[axis]).sum(axis=-1) / np.sqrt(f.size))
        return out[0], out[1]

    def _cells(
        self, layer: str, x: np.ndarray, y: np.ndarray, spacing: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Worley cell of each point on the warped plane: (cell id x, cell id y)."""
        dx, dy = self._field(layer, x, y)
        amp = WARP_AMPLITUDE_UM[layer]
        u = (x + amp * dx) / spacing
        v = (y + amp * dy) / spacing
        iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        best = np.full(u.shape, np.inf)
        cell_u = np.zeros(u.shape, dtype=np.int64)
        cell_v = np.zeros(u.shape, dtype=np.int64)
        tag = 1 if layer == "coarse" else 2
        for du in (-1, 0, 1):
            for dv in (-1, 0, 1):
                cu, cv = iu + du, iv + dv
                su = cu + _uniform(self.seed, tag, cu, cv, 1)
                sv = cv + _uniform(self.seed, tag, cu, cv, 2)
                d = (su - u) ** 2 + (sv - v) ** 2
                closer = d < best
                best = np.where(closer, d, best)
                cell_u = np.where(closer, cu, cell_u)
                cell_v = np.where(closer, cv, cell_v)
        return cell_u, cell_v

    def grain_at(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grain identity (int64 hash) and phase index at each point."""
        x = np.asarray(x_um, dtype=np.float64)
        y = np.asarray(y_um, dtype=np.float64)
        cu, cv = self._cells("coarse", x, y, COARSE_SPACING_UM)
        fu, fv = self._cells("fine", x, y, FINE_SPACING_UM)
        px, _ = self._field("patch", x, y)
        in_patch = px > np.quantile(_PATCH_REFERENCE, 1 - FINE_PATCH_FRACTION)
        inclusion = _uniform(self.seed, 3, fu, fv, 0) < INCLUSION_PROBABILITY
        fine = in_patch | inclusion
        coarse_phase = _categorical(_uniform(self.seed, 1, cu, cv, 3), COARSE_MODES)
        fine_phase = _categorical(_uniform(self.seed, 2, fu, fv, 3), FINE_MODES)
        phase = np.where(fine, fine_phase, coarse_phase)
        grain = np.where(
            fine,
            _mix(self.seed, 2, fu, fv).astype(np.int64),
            _mix(self.seed, 1, cu, cv).astype(np.int64),
        )
        return grain, phase.astype(np.int16)

    # ----- chemistry -----------------------------------------------------------------
    def _end_member_table(self) -> np.ndarray:
        """(n_phases, 2 end-members, n_el) ideal wt%."""
        symbols = element_table().symbols
        table = np.zeros((len(PHASES), 2, len(symbols)))
        for p, (_, members, _) in enumerate(PHASES):
            for k in range(2):
                m = minerals()[members[min(k, len(members) - 1)]]
                for el, wt in m.ideal_wt_pct.items():
                    if el in symbols:
                        table[p, k, symbols.index(el)] = wt
        return table

    def grain_composition(self, grain: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """wt% of every element for grains: end-member mix plus contents drawn per grain.

        The table's "typical" rows are drawn log-normally within their range for each grain;
        an element already in the formula (F, Li in lepidolite) is replaced by the draw, others
        are added, and the formula elements are rescaled so the total stays 100 wt%.
        """
        symbols = element_table().symbols
        frac = _uniform(grain, 7)[..., None]
        comp = (1 - frac) * self._compositions[phase, 0] + frac * self._compositions[phase, 1]
        traces = np.zeros_like(comp)
        drawn = np.zeros(comp.shape, dtype=bool)
        for p, (name, members, _) in enumerate(PHASES):
            sel = phase == p
            if not sel.any():
                continue
            source = minerals()[TRACE_SOURCE.get(name, members[0])]
            for el, (typ, lo, hi) in source.trace_wt_pct.items():
                if el not in symbols or typ <= 0:
                    continue
                j = symbols.index(el)
                z = ndtri(np.clip(_uniform(grain[sel], 11, j), 1e-9, 1 - 1e-9))
                # log-normal around the typical content, one sigma spans the table's range
                sigma = max(np.log(hi / typ), np.log(typ / max(lo, typ * 1e-2)), 0.1) / 2
                traces[sel, j] = np.clip(typ * np.exp(sigma * z), lo, hi)
                drawn[sel, j] = True
        comp = np.where(drawn, 0.0, comp)
        remaining = 100.0 - traces.sum(axis=-1, keepdims=True)
        return comp * remaining / comp.sum(axis=-1, keepdims=True) + traces

    def spot(self, x_um: np.ndarray, y_um: np.ndarray) -> SpotMaterial:
        """Material under a 30 µm ablation spot centred at each (x, y)."""
        x = np.asarray(x_um, dtype=np.float64).ravel()
        y = np.asarray(y_um, dtype=np.float64).ravel()
        ox, oy, w = _SPOT_OFFSETS
        gx = x[:, None] + ox[None, :]
        gy = y[:, None] + oy[None, :]
        grain, phase = self.grain_at(gx, gy)
        comp = self.grain_composition(grain, phase)  # (n, k, n_el)
        mass = self._density[phase] * self._yield[phase] * w[None, :]  # (n, k)
        mass_total = mass.sum(axis=1)
        composition = np.einsum("nk,nke->ne", mass, comp) / mass_total[:, None]
        phase_weight = np.zeros((x.size, len(PHASES)))
        np.add.at(phase_weight, (np.arange(x.size)[:, None], phase), w[None, :])
        mixed = (grain != grain[:, :1]).any(axis=1)
        return SpotMaterial(
            composition_wt_pct=composition,
            mass_factor=mass_total / w.sum(),
            mineral=phase_weight.argmax(axis=1).astype(np.int16),
            mixed=mixed,
        )


def _categorical(u: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(probabilities / probabilities.sum())
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _spot_offsets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-points of the ablation spot: centre and two rings, Gaussian beam weights."""
    r = SPOT_DIAMETER_UM / 2
    pts = [(0.0, 0.0)]
    for radius, count in ((0.45 * r, 4), (0.85 * r, 8)):
        ang = np.linspace(0, 2 * np.pi, count, endpoint=False) + radius
        pts += list(zip(radius * np.cos(ang), radius * np.sin(ang), strict=True))
    p = np.array(pts)
    weight = np.exp(-2 * (np.hypot(p[:, 0], p[:, 1]) / r) ** 2)
    return p[:, 0], p[:, 1], weight


_SPOT_OFFSETS = _spot_offsets()
# Distribution of a unit-amplitude warp field (sum of 5 random-phase sines / sqrt(5)),
# used to turn a patch area fraction into a threshold.
_PATCH_REFERENCE = np.sin(
    np.random.default_rng(12345).uniform(0, 2 * np.pi, size=(20000, 5))
).sum(axis=1) / np.sqrt(5)
