"""Installs the recipe packages: diffusion (model + training), data_prep (CC data pipeline), eval, benchmarks.

Dependencies are pinned in requirements/ and installed by `make install`, not by pip's resolver:
Composer (mosaicml) declares torch<2.7.1 and no release admits torch 2.13, so it and Streaming go in with
--no-deps (requirements/no-deps.txt) while their real runtime dependencies are listed and tested in
requirements/base.txt. install_requires below repeats the pins for the record; `make install` runs
`pip install --no-deps -e .` so pip never re-resolves them against Composer's stale torch bound.
"""
from pathlib import Path

from setuptools import find_packages, setup


def _pins(name):
    lines = (Path(__file__).parent / "requirements" / name).read_text().splitlines()
    return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


setup(
    name="commoncanvas-recipes",
    version="0.1.0",
    description="Reproducible recipes for training text-to-image diffusion models on Creative-Commons images only",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["diffusion*", "data_prep*", "eval*", "benchmarks*"]),
    install_requires=_pins("base.txt") + _pins("no-deps.txt"),
    extras_require={"gpu": ["xformers==0.0.35"]},
)
