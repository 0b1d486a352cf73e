"""Image descriptors for copy detection: SSCD (default), or CLIP / DINO image embeddings.

SSCD (Pizzi et al., CVPR 2022) is a torchvision ResNet-50 trunk whose average pool is replaced by GeM
pooling (p=3), a 2048 -> 512 linear layer and L2 normalisation; images are ImageNet-normalised with the
short side resized to 288. Its released files load here as they are:
  - `*.torchscript.pt` (e.g. sscd_disc_mixup.torchscript.pt): a standalone TorchScript model;
  - `*.torchvision.pt`: a state_dict for `SSCDResNet50` (keys `backbone.*`).
CLIP / DINO use a local transformers folder (CLIPVisionModelWithProjection's image_embeds; a ViT's CLS
token for DINO) with that folder's image processor.

Every descriptor is L2-normalised, so a dot product is a cosine similarity. Random weights only when
the caller explicitly asks (tests): a copy audit run on random weights would report nothing real.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSCD_RESIZE = 288
SSCD_HINT = (
    "an SSCD model file: sscd_disc_mixup.torchscript.pt (TorchScript) or sscd_disc_mixup.torchvision.pt "
    "(state_dict), from https://github.com/facebookresearch/sscd-copy-detection on a connected machine"
)
DESCRIPTORS = ("sscd", "clip", "dino")


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial grid: (mean x^p)^(1/p), p=3 in SSCD. No parameters."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class SSCDResNet50(nn.Module):
    """Same module tree as SSCD's torchvision variant, so its `.torchvision.pt` state_dict loads unchanged."""

    def __init__(self, dims: int = 512, pool_p: float = 3.0):
        from torchvision.models import resnet50

        super().__init__()
        self.backbone = resnet50(num_classes=dims)  # its fc is the 2048 -> dims projection
        self.backbone.avgpool = GeM(pool_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x), dim=-1)


class ImageDescriptor:
    """`transform` turns a PIL image into a CHW tensor (runs in DataLoader workers); `embed` a batch into
    L2-normalised rows."""

    def __init__(self, name: str, model: Callable, transform: Callable[[Image.Image], torch.Tensor],
                 device: torch.device, output: Callable = lambda out: out):
        self.name = name
        self.model = model
        self.transform = transform
        self.device = device
        self._output = output

    @torch.no_grad()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        out = self._output(self.model(batch.to(self.device)))
        return F.normalize(out.float(), dim=-1)

    def embed_list(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Embeds images of possibly different sizes (short-side resize keeps aspect): one batch per size."""
        out = [None] * len(tensors)
        by_shape: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            by_shape.setdefault(tuple(t.shape), []).append(i)
        for indices in by_shape.values():
            emb = self.embed(torch.stack([tensors[i] for i in indices]))
            for i, row in zip(indices, emb):
                out[i] = row
        return torch.stack(out).cpu()


class _RGB:
    """Picklable for DataLoader workers, unlike a lambda."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")


class _HFTransform:
    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def sscd_transform(resize: int = SSCD_RESIZE):
    from torchvision import transforms

    return transforms.Compose([
        _RGB(), transforms.Resize(resize), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_sscd_model(weights: Optional[str], random_weights: bool = False, seed: int = 0) -> nn.Module:
    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SSCDResNet50().eval()
    if not weights or not os.path.isfile(weights):
        raise FileNotFoundError(f"place {SSCD_HINT} at {weights or '<replication.weights>'}")
    try:  # the released .torchscript.pt files
        return torch.jit.load(weights, map_location="cpu").eval()
    except RuntimeError:
        pass
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}  # a bare torchvision ResNet state_dict
    dims = state["backbone.fc.weight"].shape[0] if "backbone.fc.weight" in state else 512
    with torch.device("meta"):  # no random init of weights that are overwritten next
        model = SSCDResNet50(dims=dims)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise ValueError(
            f"{weights}: not an SSCD TorchScript file nor a torchvision-format SSCD state_dict "
            f"(Classy Vision .classy.pt files are not supported): {str(e).splitlines()[0]}"
        ) from None
    return model.eval()


def _load_hf(kind: str, weights: Optional[str], random_weights: bool, seed: int):
    from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    if random_weights:  # tiny, for tests
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "clip":
                model = CLIPVisionModelWithProjection(CLIPVisionConfig(
                    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=64, patch_size=8, projection_dim=32))
                processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
            else:
                model = ViTModel(ViTConfig(
                    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=64, patch_size=8), add_pooling_layer=False)
                processor = ViTImageProcessor(size={"height": 64, "width": 64})
    else:
        if not weights or not os.path.isfile(os.path.join(weights, "config.json")):
            model_name = "CLIPVisionModelWithProjection / CLIPModel" if kind == "clip" else "ViTModel (e.g. facebook/dino-vitb16)"
            raise FileNotFoundError(
                f"place a transformers {model_name} folder (config.json, weights, preprocessor_config.json) "
                f"at {weights or '<replication.weights>'}"
            )
        if kind == "clip":
            model = CLIPVisionModelWithProjection.from_pretrained(weights, local_files_only=True)
        else:
            model = ViTModel.from_pretrained(weights, add_pooling_layer=False, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(weights, local_files_only=True)
    if kind == "clip":
        output = lambda out: out.image_embeds  # noqa: E731
    else:
        output = lambda out: out.last_hidden_state[:, 0]  # noqa: E731  DINO's descriptor is the CLS token
    return model.eval(), _HFTransform(processor), output


def build_descriptor(kind: str, weights: Optional[str], device: torch.device, *, random_weights: bool = False,
                     resize: int = SSCD_RESIZE, seed: int = 0) -> ImageDescriptor:
    if kind not in DESCRIPTORS:
        raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {kind!r}")
    tag = "random" if random_weights else os.path.basename(os.path.normpath(weights or ""))
    if kind == "sscd":
        model = load_sscd_model(weights, random_weights, seed).to(device)
        return ImageDescriptor(f"sscd:{tag}@{resize}", model, sscd_transform(resize), device)
    model, transform, output = _load_hf(kind, weights, random_weights, seed)
    return ImageDescriptor(f"{kind}:{tag}", model.to(device), transform, device, output)
