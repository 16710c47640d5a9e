"""relion_canon: canonical in-plane angle, defocus, weight and junk estimates for cryo-EM particles."""

__version__ = "0.1.0"
