"""Lets the CUDA-only torchvision wheel import next to a CPU-only torch.

torchvision 0.28.0 is the only release paired with torch 2.13 and ships as a CUDA build. On a CPU torch
its `_C` extension fails to load (silently), and `import torchvision` then dies in
`_meta_registrations.py` with "operator torchvision::nms does not exist". Composer imports torchvision
at start-up, so the fix must run before any user code: `install()` copies this file into site-packages
with a `.pth` line that puts a one-shot import hook on `sys.meta_path`. On the first `import torchvision`
the hook tries to load torchvision's own extension; only if that fails does it define the schemas of
the two ops torchvision registers fake kernels for (no kernels). The pure-Python parts (transforms,
models) then work; the C++ ops raise torchvision's own "Couldn't load custom C++ ops" error. Where the
extension loads (every GPU machine), the hook changes nothing.
"""
from __future__ import annotations

import glob
import importlib.abc
import importlib.util
import os
import shutil
import sys
import sysconfig

MODULE_NAME = "commoncanvas_torchvision_cpu"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: a torch.library.Library drops its definitions when collected


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    for path in glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError):
            return False
    return False


def define_missing_ops() -> bool:
    """Defines the op schemas torchvision needs at import when its extension cannot load.

    Returns True if it defined them, False if nothing was needed.
    """
    global _library
    if _library is not None or _extension_loads():
        return False
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    return True


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            try:
                define_missing_ops()
            except Exception as exc:  # never break interpreter start-up
                print(f"{MODULE_NAME}: could not prepare torchvision: {exc}", file=sys.stderr)
        return None  # the normal finders import torchvision itself


def install_hook() -> None:
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionImportHook())


def install(site_packages: str | None = None) -> str:
    """Copies this module into site-packages and adds the `.pth` line that arms the hook."""
    site_packages = site_packages or sysconfig.get_paths()["purelib"]
    shutil.copyfile(__file__, os.path.join(site_packages, MODULE_NAME + ".py"))
    pth = os.path.join(site_packages, MODULE_NAME + ".pth")
    with open(pth, "w") as f:
        f.write(f"import {MODULE_NAME}; {MODULE_NAME}.install_hook()\n")
    return pth


if __name__ == "__main__":
    print("installed", install())
