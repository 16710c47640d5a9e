"""What defines a simulated particle set (:class:`SimulationConfig`) and the checks on it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from relion_canon.errors import InputError
from relion_canon.simulate.junk import JUNK_KINDS


@dataclass
class SimulationConfig:
    """Everything that defines a simulated set. Units: Å, degrees, kV, mm; defocus in Å (positive underfocus).

    The defaults are the "realistic" benchmark protocol: 64 px at 2.5 Å, one view (rot = tilt = 0), uniform
    psi, no shifts, defocus uniform in 5,000-25,000 Å, SNR 0.1, 10 % junk of all kinds.
    """

    n_particles: int = 2000
    box: int = 64
    pixel_size: float = 2.5
    source: str = "phantom"  # "phantom", a map (.mrc/.map/.ccp4) or an atomic model (.pdb/.cif)
    map_pixel_size: float | None = None  # overrides / supplies the map header's voxel size
    phantom_seed: int = 0  # which built-in molecule (0 = the standard one)
    views: int | str = 1  # 1: the fixed view (rot, tilt); K > 1: K random views; "uniform": uniform SO(3)
    rot: float = 0.0
    tilt: float = 0.0
    psi_sigma: float | None = None  # None: psi uniform in [-180, 180); else normal(0, psi_sigma)
    psi: float | None = None  # a fixed psi for every particle (overrides psi_sigma)
    shift_sigma: float = 0.0  # Å, per axis
    ctf: bool = True
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    defocus_range: tuple[float, float] = (5000.0, 25000.0)  # Å, uniform
    defocus_values: tuple[float, ...] | None = None  # Å; if given, equally many particles at each value
    astigmatism: float = 0.0  # Å, DefocusU − DefocusV; the astigmatism angle is uniform in [0, 180)
    bfactor: float = 0.0  # Å², CTF envelope exp(−B k²/4)
    snr: float = 0.1  # math.inf: no noise
    junk_fraction: float = 0.1
    junk_kinds: tuple[str, ...] = JUNK_KINDS
    seed: int = 0
    particles_per_micrograph: int = 100  # rlnMicrographName groups (a label only; defocus is per particle)
    overwrite: bool = False

    def validate(self) -> None:
        """Raise :class:`InputError` (one line) for impossible settings."""

        def bad(msg: str) -> InputError:
            return InputError(f"simulate: {msg}")

        if self.n_particles < 1:
            raise bad(f"number of particles must be at least 1, got {self.n_particles}")
        if self.box < 8 or self.box % 2:
            raise bad(f"box must be an even number of pixels >= 8 (RELION extracts even boxes), got {self.box}")
        if not self.pixel_size > 0:
            raise bad(f"pixel size must be positive, got {self.pixel_size}")
        if isinstance(self.views, str):
            if self.views != "uniform":
                raise bad(f"views must be a number of views or 'uniform', got {self.views!r}")
        elif int(self.views) < 1:
            raise bad(f"number of views must be at least 1, got {self.views}")
        if self.psi_sigma is not None and not self.psi_sigma >= 0:
            raise bad(f"psi sigma must be >= 0, got {self.psi_sigma}")
        if not self.shift_sigma >= 0:
            raise bad(f"shift sigma must be >= 0, got {self.shift_sigma}")
        if not (self.snr > 0):
            raise bad(f"SNR must be positive (use inf for noise-free images), got {self.snr}")
        if not 0 <= self.junk_fraction <= 1:
            raise bad(f"junk fraction must be in [0, 1], got {self.junk_fraction}")
        unknown = [k for k in self.junk_kinds if k not in JUNK_KINDS]
        if unknown:
            raise bad(f"unknown junk kind(s) {', '.join(unknown)}; choose from {', '.join(JUNK_KINDS)}")
        if self.junk_fraction > 0 and not self.junk_kinds:
            raise bad("junk fraction > 0 but no junk kinds given")
        if self.ctf:
            if not 0 <= self.amplitude_contrast < 1:
                raise bad(f"amplitude contrast must be in [0, 1), got {self.amplitude_contrast}")
            if not self.voltage > 0:
                raise bad(f"voltage must be positive (kV), got {self.voltage}")
            values = list(self.defocus_values) if self.defocus_values else list(self.defocus_range)
            if self.defocus_values is None and (len(values) != 2 or values[0] > values[1]):
                raise bad(f"defocus range must be (min, max) with min <= max, got {tuple(values)}")
            if any(not np.isfinite(v) or v <= 0 for v in values):
                raise bad(f"defocus values must be positive (Å, underfocus), got {tuple(values)}")
            if any(v < 100 for v in values):
                raise bad(f"defocus is in Å, not µm: {tuple(values)} (e.g. 1 µm = 10000)")
            if self.astigmatism < 0 or self.astigmatism / 2 >= min(values):
                raise bad(f"astigmatism must be >= 0 and below twice the smallest defocus, got {self.astigmatism}")
        if self.particles_per_micrograph < 1:
            raise bad("particles per micrograph must be at least 1")

    def to_json(self) -> dict:
        d = asdict(self)
        del d["overwrite"]  # how to write, not what was simulated
        d["source"] = str(self.source)
        d["snr"] = "inf" if math.isinf(self.snr) else self.snr
        d["defocus_range"] = list(self.defocus_range)
        d["defocus_values"] = None if self.defocus_values is None else list(self.defocus_values)
        d["junk_kinds"] = list(self.junk_kinds)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SimulationConfig":
        """Inverse of :meth:`to_json` (e.g. the ``config`` of a simulation.json), to regenerate a set."""
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("snr") == "inf":
            d["snr"] = math.inf
        for key in ("defocus_range", "defocus_values", "junk_kinds"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def junk_kinds_from_text(text: str | Sequence[str]) -> tuple[str, ...]:
    """'noise,aggregate' or ['noise', 'aggregate'] → a validated tuple; 'all' → every kind."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [s.strip() for s in items if s.strip()]
    if items == ["all"]:
        return JUNK_KINDS
    unknown = [s for s in items if s not in JUNK_KINDS]
    if unknown:
        raise InputError(f"simulate: unknown junk kind(s) {', '.join(unknown)}; choose from {', '.join(JUNK_KINDS)}")
    return tuple(items)
