"""The image-making part of the simulator: clean particle and junk images before scaling and noise."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from relion_canon.ctf import ctf_2d
from relion_canon.errors import InputError
from relion_canon.geometry import canonicalise
from relion_canon.simulate.config import SimulationConfig
from relion_canon.simulate.junk import NOT_JUNK, carbon_edge, displace
from relion_canon.simulate.phantom import DECOY_SEED, phantom_volume
from relion_canon.simulate.plan import Plan, uniform_sphere
from relion_canon.geometry.projection import (
    FourierProjector,
    euler_matrix,
    half_from_images,
    images_from_half,
    shift_phase,
)
from relion_canon.simulate.sources import Volume


class Simulator:
    """The image-making part: projectors for the particle and the decoy, CTF, junk, scaling."""

    def __init__(self, config: SimulationConfig, volume: Volume, plan: Plan):
        self.c = config
        self.plan = plan
        self.box = config.box
        self.main = FourierProjector(volume.data)
        kinds = {config.junk_kinds[k] for k in np.unique(plan["kind"]) if k >= 0}
        self.kind_names = list(config.junk_kinds)
        # Fixed probe views to compare the molecules' projection strength (independent of the seed).
        probe = np.random.default_rng(12345)
        prot, ptilt = uniform_sphere(probe, 32)
        ppsi = probe.uniform(-180, 180, 32)
        main_var = float(np.mean(np.var(self.main.project(prot, ptilt, ppsi), axis=(1, 2))))
        if main_var <= 0:
            raise InputError("the map is empty (all projections are constant)", volume.info.get("path"))
        # Scale of the clean projections, for sizing the carbon edges relative to the particle.
        self.ref_std = math.sqrt(main_var)
        self.decoy: FourierProjector | None = None
        if "other_molecule" in kinds:
            decoy_vol = phantom_volume(self.box, seed=DECOY_SEED + 1000 * config.phantom_seed)
            decoy = FourierProjector(decoy_vol)
            decoy_var = float(np.mean(np.var(decoy.project(prot, ptilt, ppsi), axis=(1, 2))))
            self.decoy = FourierProjector(decoy_vol * math.sqrt(main_var / decoy_var))
        self._canonical_views: dict[int, np.ndarray] = {}
        if len(plan["view_rot"]):
            canon = self.main.project(plan["view_rot"], plan["view_tilt"], np.zeros(len(plan["view_rot"])))
            self._canonical_views = {i: canon[i] for i in range(len(canon))}

    def ctf(self, rows: np.ndarray, size: int | None = None) -> np.ndarray | None:
        if not self.c.ctf:
            return None
        p, c = self.plan, self.c
        return ctf_2d(
            size or self.box,
            c.pixel_size,
            p["defocus_u"][rows],
            p["defocus_v"][rows],
            p["defocus_angle"][rows],
            c.voltage,
            c.cs,
            c.amplitude_contrast,
            bfactor=c.bfactor,
            rfft=True,
        ).astype(np.float32)

    def clean(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(signal, canonical) images of the given particles before scaling: signal = CTF-modulated image in
        the particle's frame; canonical = psi 0, no shift, no CTF."""
        p, box = self.plan, self.box
        m = len(rows)
        names = np.array([self.kind_names[k] if k >= 0 else NOT_JUNK for k in p["kind"][rows]])
        origin_px = p["origin"][rows] / self.c.pixel_size
        phase_np = shift_phase(box, -origin_px)  # content moves by −origin
        phase = None if phase_np is None else torch.from_numpy(phase_np)
        canonical = np.zeros((m, box, box), dtype=np.float32)

        def slices(projector: FourierProjector, sel: np.ndarray, rot: str, tilt: str, psi: str) -> torch.Tensor:
            r = rows[sel]
            f = projector.slices(euler_matrix(p[rot][r], p[tilt][r], p[psi][r]))
            return f if phase is None else f * phase[sel]

        # CTF-free transforms in the particle frame; displaced particles start from the particle projection.
        f_proj = torch.zeros((m, box, box // 2 + 1), dtype=torch.complex64)
        sel = np.isin(names, (NOT_JUNK, "off_centre", "aggregate"))
        if sel.any():
            f_proj[sel] = slices(self.main, sel, "rot", "tilt", "psi")
        sel = names == NOT_JUNK
        if sel.any():
            canonical[sel] = self._canonical(rows[sel])
        sel = names == "other_molecule"
        if sel.any():
            r = rows[sel]
            f_proj[sel] = slices(self.decoy, sel, "j_rot", "j_tilt", "psi")
            canonical[sel] = self.decoy.project(p["j_rot"][r], p["j_tilt"][r], np.zeros(len(r)))

        ctf = self.ctf(rows)
        signal = images_from_half(f_proj if ctf is None else f_proj * torch.from_numpy(ctf), box).numpy()

        real_space = np.isin(names, ("off_centre", "aggregate", "carbon_edge"))
        if real_space.any():
            signal[real_space], canonical[real_space] = self._real_space_junk(
                rows, names, real_space, images_from_half(f_proj[real_space], box).numpy(), slices, origin_px
            )
        return signal, canonical

    def _real_space_junk(
        self,
        rows: np.ndarray,
        names: np.ndarray,
        real_space: np.ndarray,
        projection: np.ndarray,
        slices: Callable[..., torch.Tensor],
        origin_px: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Junk built in real space (displaced particles, film edges), made on a canvas twice the box and
        cropped after the CTF: as in a box extracted from a micrograph, what lies outside the box is cut off
        but its CTF fringes still reach in, and nothing wraps around."""
        p, box = self.plan, self.box
        big = 2 * box
        r_rows, r_names = rows[real_space], names[real_space]
        content = np.zeros((len(r_rows), big, big), dtype=np.float32)
        direction = np.deg2rad(p["j_dir"][r_rows])
        dx = p["j_dist"][r_rows] * np.cos(direction)
        dy = p["j_dist"][r_rows] * np.sin(direction)
        sel = r_names == "off_centre"
        if sel.any():
            content[sel] = displace(_pad_canvas(projection[sel], big), dx[sel], dy[sel])
        sel = r_names == "aggregate"
        if sel.any():
            # The second copy in its own random orientation; the pair is centred between the two.
            f_second = slices(self.main, real_space & (names == "aggregate"), "j_rot", "j_tilt", "j_psi")
            first = _pad_canvas(projection[sel], big)
            second = _pad_canvas(images_from_half(f_second, box).numpy(), big)
            content[sel] = displace(first, -dx[sel] / 2, -dy[sel] / 2) + displace(second, dx[sel] / 2, dy[sel] / 2)
        sel = r_names == "carbon_edge"
        if sel.any():
            r = r_rows[sel]
            content[sel] = self.ref_std * carbon_edge(
                big,
                p["j_dir"][r],
                p["edge_offset"][r],
                p["edge_width"][r],
                p["edge_step"][r],
                p["grad"][r],
                p["grad_dir"][r],
                length=box,
            )
        f_big = half_from_images(torch.from_numpy(content))
        ctf = self.ctf(r_rows, size=big)
        if ctf is not None:
            f_big = f_big * torch.from_numpy(ctf)
        signal = _crop_canvas(images_from_half(f_big, big).numpy(), box)
        canonical = canonicalise(content, p["psi"][r_rows], origin_px[real_space], out_size=box)
        return signal, canonical

    def _canonical(self, rows: np.ndarray) -> np.ndarray:
        p = self.plan
        vid = p["view_id"][rows]
        if self._canonical_views and (vid >= 0).all():
            return np.stack([self._canonical_views[int(v)] for v in vid])
        return self.main.project(p["rot"][rows], p["tilt"][rows], np.zeros(len(rows)))


def _pad_canvas(images: np.ndarray, size: int) -> np.ndarray:
    """Embed (n, box, box) images in zeros of (n, size, size), centre pixel on centre pixel."""
    box = images.shape[-1]
    out = np.zeros((len(images), size, size), dtype=images.dtype)
    lo = size // 2 - box // 2
    out[:, lo : lo + box, lo : lo + box] = images
    return out


def _crop_canvas(images: np.ndarray, box: int) -> np.ndarray:
    size = images.shape[-1]
    lo = size // 2 - box // 2
    return np.ascontiguousarray(images[:, lo : lo + box, lo : lo + box])
