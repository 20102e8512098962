"""A Czerny–Turner spectrometer seen from the simulator: optics, then detector.

The instrument line shape (Gaussian instrument function of the slit and optics, convolved
with each line's Stark Lorentzian and Doppler Gaussian, as a pseudo-Voigt) is integrated
analytically over every pixel. Profiles depend on electron density, so they are precomputed
as sparse matrices at a few densities and interpolated per shot: one sparse product per
raster line, no per-pixel Python loops.
"""

from __future__ import annotations

import tomllib
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.special import erf

from .plasma import DOPPLER_FWHM_NM, Emission
from .tables import LineTable, line_table

# Electron densities (in 1e17 cm^-3) at which line profiles are tabulated.
DENSITY_NODES = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
# Profile values below this fraction of a line's area are dropped from the sparse matrix.
PROFILE_CUTOFF = 1e-6


@dataclass(frozen=True)
class InstrumentProfile:
    """Everything that makes one spectrometer differ from another (TOML in resources)."""

    name: str
    description: str
    n_pixels: int
    wavelength_poly_nm: tuple[float, ...]
    resolution_fwhm_nm: tuple[float, float]
    response: dict[str, float]
    collection: dict[str, float]
    detector: dict[str, float]
    session: dict[str, float]

    @classmethod
    def load(cls, name_or_path: str | Path) -> InstrumentProfile:
        """A shipped profile by name ("primary", "secondary") or a TOML file path."""
        path = Path(name_or_path)
        if path.suffix == ".toml":
            text = path.read_text(encoding="utf-8")
        else:
            resource = files("plumelink.resources").joinpath("profiles", f"{name_or_path}.toml")
            if not resource.is_file():
                raise FileNotFoundError(f"no instrument profile named {name_or_path!r}")
            text = resource.read_text(encoding="utf-8")
        data = tomllib.loads(text)
        try:
            profile = cls(
                name=data["name"],
                description=data.get("description", ""),
                n_pixels=int(data["n_pixels"]),
                wavelength_poly_nm=tuple(float(c) for c in data["wavelength_poly_nm"]),
                resolution_fwhm_nm=tuple(float(c) for c in data["resolution_fwhm_nm"]),
                response=dict(data["response"]),
                collection=dict(data["collection"]),
                detector=dict(data["detector"]),
                session=dict(data["session"]),
            )
        except KeyError as exc:
            raise ValueError(f"instrument profile {name_or_path}: missing field {exc}") from exc
        if profile.n_pixels < 2:
            raise ValueError(f"instrument profile {profile.name}: n_pixels must be >= 2")
        return profile

    def wavelength_nm(self, pixel: np.ndarray | None = None) -> np.ndarray:
        """Nominal calibration: wavelength of each pixel centre (or of given pixel positions)."""
        p = np.arange(self.n_pixels, dtype=np.float64) if pixel is None else pixel
        return np.polynomial.polynomial.polyval(p, self.wavelength_poly_nm)

    def as_settings(self) -> dict:
        """The profile as a plain settings dict for the map file's instrument snapshot."""
        return {
            "profile": self.name,
            "description": self.description,
            "n_pixels": self.n_pixels,
            "wavelength_poly_nm": list(self.wavelength_poly_nm),
            "resolution_fwhm_nm": list(self.resolution_fwhm_nm),
            "response": self.response,
            "collection": self.collection,
            "detector": self.detector,
        }


def pseudo_voigt_cdf(x: np.ndarray, gauss_fwhm: np.ndarray, lorentz_fwhm: np.ndarray) -> np.ndarray:
    """Cumulative pseudo-Voigt (Thompson–Cox–Hastings) at offset x from the line centre."""
    g, lo = gauss_fwhm, lorentz_fwhm
    f = (
        g**5 + 2.69269 * g**4 * lo + 2.42843 * g**3 * lo**2 + 4.47163 * g**2 * lo**3
        + 0.07842 * g * lo**4 + lo**5
    ) ** 0.2
    r = lo / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    lorentz = 0.5 + np.arctan(2.0 * x / f) / np.pi
    gauss = 0.5 * (1.0 + erf(x * (2.0 * np.sqrt(np.log(2.0))) / f))
    return eta * lorentz + (1.0 - eta) * gauss


class Spectrograph:
    """One spectrometer on one measurement day: renders plume emission to raw counts."""

    def __init__(
        self,
        profile: InstrumentProfile,
        *,
        day: int = 0,
        seed: int = 0,
        lines: LineTable | None = None,
    ) -> None:
        self.profile = profile
        self.day = int(day)
        self.lines = lines or line_table()
        tag = zlib.crc32(profile.name.encode())
        unit_rng = np.random.default_rng([seed, tag, 0])  # fixed for the instrument
        day_rng = np.random.default_rng([seed, tag, 1000 + self.day])  # drifts by day
        n = profile.n_pixels
        s = profile.session
        shift = 0.0 if self.day == 0 else s["wavelength_shift_nm"] * day_rng.uniform(0.6, 1.4)
        shift *= day_rng.choice([-1.0, 1.0]) if self.day else 1.0
        # The instrument reports its nominal calibration; the true one has drifted.
        self.wavelength_nm = profile.wavelength_nm()
        edges = profile.wavelength_nm(np.arange(n + 1, dtype=np.float64) - 0.5) + shift
        centres = self.wavelength_nm + shift
        self._pixel_width = np.diff(edges)

        det = profile.detector
        d = self.day
        throughput = profile.collection["throughput"] * (
            1.0 + (s["throughput"] * day_rng.standard_normal() if d else 0.0)
        )
        self._gain = det["counts_per_unit"] * throughput * self._response(centres)
        self._gain *= 1.0 + det["prnu"] * unit_rng.standard_normal(n)
        t = (centres - centres.mean()) / np.ptp(centres)
        baseline = np.zeros(n)
        if d:
            a = s["baseline_counts"] * day_rng.uniform(0.5, 1.0, size=3)
            baseline = a[0] + a[1] * t + a[2] * (2 * t**2 - 0.5) * day_rng.choice([-1, 1])
        self._dark = det["dark_counts"] + det["dark_pattern_counts"] * unit_rng.standard_normal(n)
        self._dark += baseline
        self._continuum_shape = (300.0 / centres) ** 2 * self._pixel_width
        self._profiles = self._profile_matrices(edges)

    def _response(self, wavelength: np.ndarray) -> np.ndarray:
        r = self.profile.response
        grating = np.exp(-0.5 * ((wavelength - r["blaze_nm"]) / r["blaze_width_nm"]) ** 2)
        fibre = 1.0 / (1.0 + np.exp(-(wavelength - r["fibre_uv_edge_nm"]) / r["fibre_uv_width_nm"]))
        return grating * fibre

    def _profile_matrices(self, edges: np.ndarray) -> list[sparse.csr_matrix]:
        """Pixel-integrated line profiles (n_lines x n_pixels), one per density node."""
        lines = self.lines
        lo_res, hi_res = self.profile.resolution_fwhm_nm
        frac = (lines.wavelength_nm - edges[0]) / (edges[-1] - edges[0])
        inst = lo_res + (hi_res - lo_res) * np.clip(frac, 0.0, 1.0)
        gauss = np.sqrt(inst**2 + DOPPLER_FWHM_NM**2)[:, None]
        matrices = []
        offset = edges[None, :] - lines.wavelength_nm[:, None]
        for node in DENSITY_NODES:
            lorentz = (lines.stark_fwhm_nm * node)[:, None]
            cdf = pseudo_voigt_cdf(offset, gauss, lorentz)
            prof = np.diff(cdf, axis=1)
            prof[prof < PROFILE_CUTOFF] = 0.0
            matrices.append(sparse.csr_matrix(prof.astype(np.float32)))
        return matrices

    @property
    def n_pixels(self) -> int:
        return self.profile.n_pixels

    def expected_counts(self, emission: Emission) -> np.ndarray:
        """Noise-free signal in counts above dark, (n_shots, n_pixels) float32."""
        log_nodes = np.log(DENSITY_NODES)
        x = np.clip(np.log(emission.stark_scale), log_nodes[0], log_nodes[-1])
        k = np.clip(np.searchsorted(log_nodes, x) - 1, 0, len(log_nodes) - 2)
        w_hi = (x - log_nodes[k]) / (log_nodes[k + 1] - log_nodes[k])
        intensity = emission.line_intensity.astype(np.float32)
        signal = np.zeros((len(x), self.n_pixels), dtype=np.float32)
        for node in np.unique(k):
            rows = np.flatnonzero(k == node)
            lo = intensity[rows] * (1.0 - w_hi[rows, None]).astype(np.float32)
            hi = intensity[rows] * w_hi[rows, None].astype(np.float32)
            block = (self._profiles[node].T @ lo.T + self._profiles[node + 1].T @ hi.T).T
            signal[rows] = block
        signal += np.outer(emission.continuum_amplitude, self._continuum_shape).astype(np.float32)
        signal *= self._gain.astype(np.float32)
        return signal

    def read_out(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Detector: shot and read noise, dark, 16-bit saturation -> raw uint16 counts."""
        det = self.profile.detector
        variance = np.maximum(signal, 0.0) / np.float32(det["electrons_per_count"])
        variance += np.float32(det["read_noise_counts"] ** 2)
        noise = rng.standard_normal(signal.shape, dtype=np.float32)
        counts = signal + self._dark.astype(np.float32) + np.sqrt(variance) * noise
        np.clip(counts, 0.0, det["full_scale"], out=counts)
        return np.rint(counts).astype(np.uint16)

    def record(self, emission: Emission, rng: np.random.Generator) -> np.ndarray:
        """Raw spectra of the given shots."""
        return self.read_out(self.expected_counts(emission), rng)
