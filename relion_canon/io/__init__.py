"""Particle I/O: RELION STAR files, MRC stacks, lazy particle sources."""

from relion_canon.io.imagename import ImageRef, format_image_name, parse_image_name
from relion_canon.io.mrc import open_stack, read_map, stack_writer, write_map, write_stack
from relion_canon.io.source import ParticleSource
from relion_canon.io.star import Optics, ParticleStar, read_star, write_star

__all__ = [
    "ImageRef",
    "Optics",
    "ParticleSource",
    "ParticleStar",
    "format_image_name",
    "open_stack",
    "parse_image_name",
    "read_map",
    "read_star",
    "stack_writer",
    "write_map",
    "write_stack",
    "write_star",
]
