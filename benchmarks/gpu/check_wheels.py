"""Checks that the wheel folder download_wheels.sh filled is complete for a GPU machine with no registry.

    python benchmarks/gpu/check_wheels.py [FOLDER] [--download]      (exit 0: complete; 1: not; 2: bad input)

1. The folder holds exactly one wheel per line of wheels.txt, each for CPython 3.12 on manylinux x86-64,
   the same versions as requirements/*.txt (where a name is in both), and is under 64 MiB (the most a
   device call may carry).
2. It installs the folder into a temporary target with `pip install --no-deps --target` (as
   run_on_gpu.sh does there), then imports every module benchmarks.gpu_suite uses in a Python started
   with -S (no site-packages) whose path is only: that target, then a view of this machine's venv holding
   just the distributions the GPU machine also has (gpu_machine_packages.txt), then the repository.
   A module the folder lacks therefore fails to import here as it would there. The packages we ship must
   be imported from the target (they shadow the GPU machine's other versions). Wheels built only for
   cp312 cannot load in this Python: their presence is checked, and their local build is put in the view.
--download runs download_wheels.sh first (needs the registry; files already there are kept).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_FOLDER = os.path.join(HERE, "wheels")
LIMIT_BYTES = 64 * 2 ** 20
# Pinned differently on purpose (wheels.txt says why).
MAY_DIFFER = {"zstd"}
# What the suite imports, lazily too (parts import their models inside functions).
SUITE_MODULES = (
    "benchmarks.gpu_suite", "run", "diffusion.train", "diffusion.config", "data_prep.precompute_latents",
    "data_prep.caption", "benchmarks.dataloader_throughput", "composer", "composer.trainer", "composer.callbacks",
    "composer.algorithms", "composer.loggers", "composer.distributed", "composer.utils.dist", "mcli", "streaming",
    "streaming.base.compression", "diffusers", "diffusers.models.unets.unet_2d_condition",
    "diffusers.models.autoencoders.autoencoder_kl", "transformers", "transformers.models.clip.modeling_clip",
    "transformers.models.blip_2.modeling_blip_2", "transformers.models.opt.modeling_opt", "tokenizers",
    "huggingface_hub", "omegaconf", "torchmetrics", "cleanfid", "torch_optimizer", "coolname",
)
# Imported modules that must come from the wheel folder, with the version they must have.
SHADOWING = {"transformers": "transformers", "huggingface_hub": "huggingface-hub", "tokenizers": "tokenizers",
             "torchmetrics": "torchmetrics", "diffusers": "diffusers", "composer": "mosaicml",
             "streaming": "mosaicml-streaming", "omegaconf": "omegaconf"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[norm(name)] = version.strip()
    return pins


def read_names(path: str) -> set[str]:
    return {norm(w) for line in open(path) for w in line.split("#")[0].split()}


def wheel_info(filename: str) -> tuple[str, str, str, str, str]:
    """(name, version, python tag, abi tag, platform tag) of a wheel file name."""
    parts = filename[:-len(".whl")].split("-")
    return norm(parts[0]), parts[1], parts[-3], parts[-2], parts[-1]


def loads_here(python_tag: str, abi: str) -> bool:
    """Whether this interpreter can load the wheel's binary parts (pure and abi3 wheels: yes)."""
    if abi in ("none", "abi3"):
        return True
    return python_tag == f"cp{sys.version_info.major}{sys.version_info.minor}"


def check_folder(folder: str, pins: dict[str, str], requirement_pins: dict[str, str]) -> tuple[list[str], dict]:
    problems, wheels = [], {}
    files = sorted(f for f in os.listdir(folder) if f.endswith(".whl")) if os.path.isdir(folder) else []
    for f in files:
        name, version, py, abi, plat = wheel_info(f)
        if name in wheels:
            problems.append(f"two wheels of {name}: {wheels[name]['file']} and {f} (one version each, or the install stops)")
        wheels[name] = {"file": f, "version": version, "binary": plat != "any", "loads_here": loads_here(py, abi)}
        if plat != "any" and ("x86_64" not in plat or py not in ("cp312", "cp39", "cp310", "cp311", "cp38", "cp37")):
            problems.append(f"{f}: not a CPython 3.12 manylinux x86-64 wheel")
        if name not in pins:
            problems.append(f"{f}: not in wheels.txt (remove it)")
    for name, version in pins.items():
        if name not in wheels:
            problems.append(f"{name}=={version}: no wheel in {folder} (run download_wheels.sh)")
        elif wheels[name]["version"] != version:
            problems.append(f"{name}: wheel {wheels[name]['version']}, wheels.txt {version}")
        if name in requirement_pins and requirement_pins[name] != version and name not in MAY_DIFFER:
            problems.append(f"{name}: wheels.txt {version}, requirements {requirement_pins[name]} (keep them equal)")
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    if size > LIMIT_BYTES:
        problems.append(f"{folder} holds {size / 2 ** 20:.1f} MiB: over the 64 MiB a device call may carry")
    return problems, {"wheels": wheels, "bytes": size}


def install(folder: str, target: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--no-index", "--no-compile", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
           *[a for p in PLATFORMS for a in ("--platform", p)], "--target", target]
    cmd += sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".whl"))
    subprocess.run(cmd, check=True)


def build_view(view: str, allowed: set[str]) -> list[str]:
    """Links, in `view`, the top-level files of every distribution of this venv whose name is `allowed`."""
    linked = []
    for dist in md.distributions():
        if norm(dist.metadata["Name"] or "") not in allowed or not dist.files:
            continue
        site = str(dist.locate_file(""))
        for top in {str(f).split("/")[0] for f in dist.files if not str(f).startswith("..")}:
            src, dst = os.path.join(site, top), os.path.join(view, top)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)
        linked.append(norm(dist.metadata["Name"]))
    return linked


def set_aside(target: str, names: set[str]) -> None:
    """Removes the installed files of `names` from target, so the import check uses this machine's build of
    them: a cp312 extension inside a package would otherwise hide the local one behind the package path."""
    for dist in md.distributions(path=[target]):
        if norm(dist.metadata["Name"]) in names:
            for top in {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}:
                path = os.path.join(target, top)
                shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)


BOOTSTRAP = r"""
import importlib, json, sys, traceback
sys.path[:0] = json.loads(sys.argv[1])
try:  # this CPU machine's torchvision needs its op-schema shim (diffusion/compat); the GPU machine does not
    import commoncanvas_torchvision_cpu
    commoncanvas_torchvision_cpu.install_hook()
except ImportError:
    pass
found = {}
for name in json.loads(sys.argv[2]):
    try:
        module = importlib.import_module(name)
        found[name] = {"file": getattr(module, "__file__", None) or "", "version": getattr(module, "__version__", None)}
    except BaseException as exc:
        found[name] = {"error": f"{type(exc).__name__}: {exc}", "missing": getattr(exc, "name", None)}
print("RESULT " + json.dumps(found))
"""


def import_check(target: str, view: str, shipped: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-S", "-c", BOOTSTRAP, json.dumps([target, view, REPO]),
                          json.dumps(SUITE_MODULES)], capture_output=True, text=True, env=env, cwd=REPO)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        return [f"the import check crashed: {out.stderr.strip()[-2000:]}"]
    found, problems = json.loads(line[len("RESULT "):]), []
    for name, info in found.items():
        if "error" in info:
            hint = f" (the folder lacks {info['missing']!r}?)" if info.get("missing") else ""
            problems.append(f"import {name}: {info['error']}{hint}")
    for module, dist in SHADOWING.items():
        info = found.get(module, {})
        if "file" in info and not info["file"].startswith(target):
            problems.append(f"{module} came from {info['file']}, not the wheel folder: PYTHONPATH order is wrong")
        if dist in shipped and info.get("version") and info["version"] != shipped[dist]["version"]:
            problems.append(f"{module} {info['version']} imported, wheel has {shipped[dist]['version']}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu/check_wheels.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=DEFAULT_FOLDER)
    p.add_argument("--download", action="store_true", help="run download_wheels.sh into FOLDER first")
    args = p.parse_args(argv)
    if args.download:
        subprocess.run([os.path.join(HERE, "download_wheels.sh"), args.folder], check=True,
                       env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)})
    if not os.path.isdir(args.folder):
        print(f"check_wheels: {args.folder}: no such folder (run benchmarks/gpu/download_wheels.sh)", file=sys.stderr)
        return 2
    pins = read_pins(os.path.join(HERE, "wheels.txt"))
    req = {}
    for f in ("base.txt", "no-deps.txt"):
        req.update(read_pins(os.path.join(REPO, "requirements", f)))
    problems, info = check_folder(args.folder, pins, req)
    print(f"{len(info['wheels'])} wheels, {info['bytes'] / 2 ** 20:.1f} MiB in {args.folder}")
    if not problems:
        with tempfile.TemporaryDirectory(prefix="check_wheels_") as tmp:
            target, view = os.path.join(tmp, "target"), os.path.join(tmp, "view")
            os.makedirs(view)
            install(args.folder, target)
            cp312_only = {n for n, w in info["wheels"].items() if not w["loads_here"]}
            allowed = (read_names(os.path.join(HERE, "gpu_machine_packages.txt")) - set(pins)) | cp312_only
            build_view(view, allowed)
            set_aside(target, cp312_only)
            for path in sys.path:  # the CPU-only torchvision shim of this machine (not a distribution)
                candidate = os.path.join(path, "commoncanvas_torchvision_cpu.py")
                if os.path.isfile(candidate) and not os.path.exists(os.path.join(view, "commoncanvas_torchvision_cpu.py")):
                    os.symlink(candidate, os.path.join(view, "commoncanvas_torchvision_cpu.py"))
            if cp312_only:
                print(f"cp312-only binary wheels (present; their local build stands in for the import check): "
                      f"{', '.join(sorted(cp312_only))}")
            problems = import_check(target, view, info["wheels"])
    for problem in problems:
        print(f"  - {problem}")
    print("complete" if not problems else f"INCOMPLETE: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
