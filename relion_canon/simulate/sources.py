"""Turn what the user names (the built-in phantom, an MRC map, an atomic model) into a volume at the target
box and pixel size, in MRC axis order (z, y, x) with the molecule's centre at voxel ``box // 2``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relion_canon.errors import InputError
from relion_canon.geometry.volume import resample_map
from relion_canon.io.mrc import read_map
from relion_canon.simulate.phantom import PARTICLE_SEED, phantom_volume

MAP_SUFFIXES = (".mrc", ".map", ".ccp4")
MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
PHANTOM = "phantom"


@dataclass
class Volume:
    """A map ready for projection, and how it was made (written to simulation.json)."""

    data: np.ndarray  # (box, box, box) float32, (z, y, x)
    pixel_size: float
    info: dict = field(default_factory=dict)


def source_kind(source: str | Path) -> str:
    """'phantom', 'map' or 'model' from the name; anything else is an :class:`InputError`."""
    if str(source) == PHANTOM:
        return "phantom"
    name = Path(source).name.lower()
    if name.endswith(MAP_SUFFIXES):
        return "map"
    if name.removesuffix(".gz").endswith(MODEL_SUFFIXES):  # gemmi reads gzipped models directly
        return "model"
    raise InputError(
        f"unknown source type (expected 'phantom', a map {'/'.join(MAP_SUFFIXES)} "
        f"or an atomic model {'/'.join(MODEL_SUFFIXES)})",
        source,
    )


def load_source(
    source: str | Path,
    box: int,
    pixel_size: float,
    map_pixel_size: float | None = None,
    phantom_seed: int = PARTICLE_SEED,
) -> Volume:
    """The volume to project, at ``box`` voxels of ``pixel_size`` Å. ``map_pixel_size`` overrides (or supplies,
    when the header has none) a map's voxel size."""
    kind = source_kind(source)
    if kind == "phantom":
        info = {"kind": "phantom", "phantom_seed": phantom_seed}
        return Volume(phantom_volume(box, seed=phantom_seed), pixel_size, info)
    path = Path(source)
    if kind == "map":
        data, header_apix = read_map(path)
        apix = map_pixel_size if map_pixel_size is not None else header_apix
        if apix is None:
            raise InputError("the map header gives no voxel size; pass its pixel size with --map-pixel-size", path)
        if not apix > 0:
            raise InputError(f"map pixel size must be positive, got {apix}", path)
        vol = resample_map(data, apix, box, pixel_size)
        info = {"kind": "map", "path": str(path), "map_box": int(data.shape[0]), "map_pixel_size": float(apix)}
        return Volume(vol, pixel_size, info)
    vol, info = model_volume(path, box, pixel_size)
    return Volume(vol, pixel_size, info)


def fourier_crop(data: np.ndarray, size: int) -> np.ndarray:
    """Downsample an even cubic map to ``size`` (even) by keeping the central Fourier cube; the centre voxel
    ``n // 2`` maps onto ``size // 2``. Values are scaled so that per-voxel density keeps its meaning."""
    n = data.shape[0]
    f = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(data)))
    lo = n // 2 - size // 2
    f = f[lo : lo + size, lo : lo + size, lo : lo + size]
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(f))).real
    return out * (size / n) ** 3


def model_volume(path: Path, box: int, pixel_size: float, oversample: int = 2) -> tuple[np.ndarray, dict]:
    """Electron-scattering density of an atomic model (gemmi's DensityCalculatorE, atomic B-factors kept),
    centred on the model's centre of mass, as a (z, y, x) map of ``box``³ voxels of ``pixel_size`` Å.

    The density is computed on a grid ``oversample`` times finer and Fourier-cropped, so that atoms sharper
    than the target pixel do not alias. The grid is large enough to hold the whole model, so nothing wraps
    around; what lies outside the box is cut off.
    """
    import gemmi

    if not path.is_file():
        raise InputError("atomic model file not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError/OSError on unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read atomic model ({first})", path) from exc
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError("atomic model has no atoms", path)
    st.remove_waters()
    model = st[0]
    if model.count_atom_sites() == 0:
        raise InputError("atomic model has only waters", path)
    pos = np.array([atom.pos.tolist() for chain in model for res in chain for atom in res])
    centre = model.calculate_center_of_mass()
    extent = 2.0 * float(np.max(np.linalg.norm(pos - np.array(centre.tolist()), axis=1))) + 20.0
    # An even number of target pixels that covers both the box and the model (plus a margin for atom tails).
    big = max(box, int(np.ceil(extent / pixel_size)))
    big += big % 2
    fine = big * oversample
    spacing = pixel_size / oversample
    cell_len = fine * spacing
    st.cell = gemmi.UnitCell(cell_len, cell_len, cell_len, 90, 90, 90)
    shift = gemmi.Vec3(*(cell_len / 2 - np.array(centre.tolist())))  # centre of mass → grid point fine // 2
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), shift))
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 2.0 * spacing
    dc.grid.set_unit_cell(st.cell)
    dc.grid.spacegroup = gemmi.SpaceGroup("P1")
    dc.grid.set_size(fine, fine, fine)
    dc.add_model_density_to_grid(model)
    dens = np.array(dc.grid.array, dtype=np.float64, copy=True).transpose(2, 1, 0)  # gemmi is (x, y, z)
    if oversample > 1:
        dens = fourier_crop(dens, big)
    lo = big // 2 - box // 2
    vol = dens[lo : lo + box, lo : lo + box, lo : lo + box]
    info = {
        "kind": "model",
        "path": str(path),
        "atoms": int(model.count_atom_sites()),
        "centre_of_mass_angstrom": [float(x) for x in centre.tolist()],
        "model_diameter_angstrom": float(extent - 20.0),
    }
    if extent - 20.0 > box * pixel_size:
        info["clipped"] = True
    return np.ascontiguousarray(vol, dtype=np.float32), info
