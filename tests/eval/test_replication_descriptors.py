import numpy as np
import pytest
import torch
from PIL import Image

from eval.replication.descriptors import GeM, ImageDescriptor, build_descriptor, load_sscd_model, sscd_transform

from eval_testdata import synthetic_image

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [synthetic_image(rng, 72) for _ in range(2)]


@pytest.fixture(scope="module")
def sscd_random():
    return load_sscd_model(None, random_weights=True, seed=0)


def test_gem_is_the_generalised_mean():
    x = torch.rand(2, 5, 3, 4)
    expected = (x.pow(3).sum(dim=(2, 3)) / 12).pow(1 / 3)
    torch.testing.assert_close(GeM(3.0)(x), expected)


def test_sscd_preprocessing_and_output(images, sscd_random):
    t = sscd_transform()(Image.new("RGB", (600, 300), "gray"))
    assert t.shape == (3, 288, 576)  # short side to 288, aspect kept
    assert t[0].mean().item() == pytest.approx((128 / 255 - 0.485) / 0.229, abs=1e-3)  # ImageNet normalisation
    x = torch.stack([sscd_transform(64)(im) for im in images])
    with torch.no_grad():
        out = sscd_random(x)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert isinstance(sscd_random.backbone.avgpool, GeM) and sscd_random.backbone.fc.in_features == 2048


def test_torchvision_format_state_dicts_load_and_agree(tmp_path, images, sscd_random):
    x = torch.stack([sscd_transform(64)(im) for im in images])
    with torch.no_grad():
        expected = sscd_random(x)
    torch.save(sscd_random.state_dict(), tmp_path / "sscd.torchvision.pt")
    torch.save(sscd_random.backbone.state_dict(), tmp_path / "bare_resnet.pt")  # keys without "backbone."
    for name in ("sscd.torchvision.pt", "bare_resnet.pt"):
        d = build_descriptor("sscd", str(tmp_path / name), CPU, resize=64)
        torch.testing.assert_close(d.embed_list(list(x)), expected, rtol=1e-4, atol=1e-5)
    torch.save({"something": torch.zeros(3)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="not an SSCD"):
        build_descriptor("sscd", str(tmp_path / "wrong.pt"), CPU)


class _SmallDescriptorNet(torch.nn.Module):
    """Stands in for a released TorchScript file (tracing a ResNet-50 here would take most of a minute)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)
        self.fc = torch.nn.Linear(8, 512)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_torchscript_file_is_used_as_is_and_normalised(tmp_path, images):
    net = _SmallDescriptorNet().eval()
    torch.jit.script(net).save(str(tmp_path / "sscd_disc_mixup.torchscript.pt"))
    d = build_descriptor("sscd", str(tmp_path / "sscd_disc_mixup.torchscript.pt"), CPU, resize=64)
    assert isinstance(d.model, torch.jit.ScriptModule)
    x = torch.stack([d.transform(im) for im in images])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net(x), dim=1)
    torch.testing.assert_close(d.embed_list(list(x)), expected, rtol=1e-4, atol=1e-5)


def test_random_weights_only_on_request(tmp_path):
    with pytest.raises(FileNotFoundError, match="place an SSCD model file"):
        build_descriptor("sscd", str(tmp_path / "sscd_disc_mixup.torchscript.pt"), CPU)
    with pytest.raises(FileNotFoundError, match="place an SSCD model file"):
        build_descriptor("sscd", None, CPU)
    with pytest.raises(FileNotFoundError, match="ViTModel"):
        build_descriptor("dino", str(tmp_path / "dino"), CPU)
    with pytest.raises(ValueError, match="descriptor must be one of"):
        build_descriptor("resnet", None, CPU, random_weights=True)


def test_mixed_sizes_are_batched_per_size(images, sscd_random):
    d = ImageDescriptor("sscd:random@64", sscd_random, sscd_transform(64), CPU)
    tall = images[0].resize((72, 144))
    tensors = [d.transform(im) for im in (images[0], tall, images[1])]  # squares share a batch
    out = d.embed_list(tensors)
    single = torch.cat([d.embed(t[None]) for t in tensors])
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "dino"])
def test_transformers_descriptors_from_a_local_folder(kind, tmp_path, images):
    random = build_descriptor(kind, None, CPU, random_weights=True)
    random.model.save_pretrained(tmp_path / kind)
    random.transform.processor.save_pretrained(tmp_path / kind)
    loaded = build_descriptor(kind, str(tmp_path / kind), CPU)
    a = random.embed_list([random.transform(im) for im in images])
    b = loaded.embed_list([loaded.transform(im) for im in images])
    assert a.shape == (2, 32)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b.norm(dim=1), torch.ones(2))
