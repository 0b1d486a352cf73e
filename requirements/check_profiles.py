"""CI check: every install profile (requirements/{gpu,cloud,loggers}.txt, and all of them at once) resolves together
with the base pins under constraints.txt, and would neither install a torch / torchvision / triton / nvidia-* wheel
nor change the version of a package the base install already has. So does `pip install -e .[gpu,cloud,loggers]`
(setup.py's extras), which used to end in ResolutionImpossible.

It runs `pip install --dry-run --report` in the environment it is started from (the project's .venv after
`make install`): pip reads package metadata only, so no wheel (and no CUDA wheel) is downloaded or installed.

    .venv/bin/python requirements/check_profiles.py [PROFILE ...]
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILES = ("gpu", "cloud", "loggers")
FORBIDDEN = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")  # torch 2.13 on PyPI pulls cuda-toolkit
OWN_NAME = "commoncanvas-recipes"
TIMEOUT_S = 900  # one resolve; metadata only, but over the network
NOISE = "is ignored: it is neither"  # pip's note about this machine's partial local index


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dry_run(requirements: list[str]) -> list[tuple[str, str]]:
    """(name, version) of what `pip install <requirements>` (with constraints.txt) would add or change here."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run", "--quiet",
               "--report", report, "-c", os.path.join(HERE, "constraints.txt"), *requirements]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"error: pip install --dry-run {' '.join(requirements)} took over {TIMEOUT_S} s") from None
        if proc.returncode:
            log = "\n".join(l for l in (proc.stdout + proc.stderr).splitlines() if NOISE not in l)
            raise SystemExit(f"error: pip install {' '.join(requirements)} does not resolve:\n{log}")
        with open(report) as fh:
            return [(_canonical(i["metadata"]["name"]), i["metadata"]["version"]) for i in json.load(fh)["install"]]


def profile_requirements(profiles: list[str]) -> list[str]:
    """What `make install EXTRAS=<profiles>` asks pip for."""
    args = []
    for name in ["base", "test", *profiles]:
        args += ["-r", os.path.join(HERE, f"{name}.txt")]
    return args


def problems(changes: list[tuple[str, str]]) -> list[str]:
    found = []
    for name, version in changes:
        if FORBIDDEN.match(name):
            found.append(f"would install {name}=={version} (torch stays as constraints.txt pins it; no CUDA wheels)")
            continue
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name == OWN_NAME or have == version:  # `-e .` always reinstalls the project itself
            continue
        found.append(f"would change {name} {have} -> {version}, already installed by the base install")
    return found


def main(argv: list[str]) -> int:
    checks = [(f"profile {p}", profile_requirements([p])) for p in (argv or PROFILES)]
    if not argv:
        checks.append((f"profiles {'+'.join(PROFILES)}", profile_requirements(list(PROFILES))))
        checks.append((f"pip install -e .[{','.join(PROFILES)}]", ["-e", f"{os.path.dirname(HERE)}[{','.join(PROFILES)}]"]))
    failed = False
    for label, requirements in checks:
        changes = dry_run(requirements)
        bad = problems(changes)
        for line in bad:
            print(f"FAIL {label}: {line}")
        if not bad:
            print(f"ok   {label}: resolves with the base pins; would install {len(changes)} packages, no torch/CUDA wheel")
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
