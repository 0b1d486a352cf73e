"""The torchvision import hook: composer and torchvision import on a CPU torch; the hook is one-shot and
does nothing where torchvision's own extension loads."""
import subprocess
import sys

import torch

from diffusion.compat import torchvision_cpu


def test_torchvision_and_composer_import_in_a_fresh_interpreter():
    code = "import composer, torchvision; from torchvision import transforms; print(transforms.Resize(4)(torch.zeros(3, 8, 8)).shape)"
    out = subprocess.run([sys.executable, "-c", "import torch; " + code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([3, 4, 4])" in out.stdout


def test_install_writes_module_and_pth(tmp_path):
    pth = torchvision_cpu.install(str(tmp_path))
    assert open(pth).read().strip() == f"import {torchvision_cpu.MODULE_NAME}; {torchvision_cpu.MODULE_NAME}.install_hook()"
    assert (tmp_path / f"{torchvision_cpu.MODULE_NAME}.py").read_text() == open(torchvision_cpu.__file__).read()


def test_hook_is_a_no_op_once_torchvision_is_importable():
    import torchvision  # noqa: F401  (already prepared by the hook at interpreter start)

    assert hasattr(torch.ops.torchvision, "nms")
    assert torchvision_cpu.define_missing_ops() is False  # never defines twice
    torchvision_cpu.install_hook()  # torchvision already imported: nothing is armed
    assert not any(isinstance(f, torchvision_cpu._TorchvisionImportHook) for f in sys.meta_path)
