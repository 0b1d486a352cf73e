"""Installs the recipe packages: diffusion (model + training), data_prep (CC data pipeline), eval, benchmarks.

The supported install is `make install [EXTRAS=gpu,cloud,loggers]` (see README, "Installing"). What pip's
resolver may see is split on purpose:
- install_requires = requirements/base.txt: the pins tested together, torch==2.13.0 included. They resolve.
- extras_require = requirements/<profile>.txt (gpu, cloud, loggers, test): each resolves with the base pins
  (requirements/check_profiles.py proves it in CI), so `pip install -e .[gpu]` works.
- Composer (mosaicml) and Streaming are NOT here: every mosaicml release declares torch<2.7.1, so listing it
  made `pip install -e .[gpu]` end in ResolutionImpossible. They go in afterwards with
  `pip install --no-deps -r requirements/no-deps.txt` (make install does it); their real runtime
  dependencies are pinned in base.txt, and their cloud / tracker clients are the `cloud` / `loggers` extras.
"""
from pathlib import Path

from setuptools import find_packages, setup

REQUIREMENTS = Path(__file__).parent / "requirements"


def _pins(name):
    lines = (REQUIREMENTS / name).read_text().splitlines()
    return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip()]


setup(
    name="commoncanvas-recipes",
    version="0.1.0",
    description="Reproducible recipes for training text-to-image diffusion models on Creative-Commons images only",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["diffusion*", "data_prep*", "eval*", "benchmarks*"]),
    install_requires=_pins("base.txt"),
    extras_require={profile: _pins(f"{profile}.txt") for profile in ("gpu", "cloud", "loggers", "test")},
)
