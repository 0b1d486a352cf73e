"""Image descriptors for copy detection: SSCD (default), DINOv2 (permissively licensed), or CLIP / DINO embeddings.

SSCD (Pizzi et al., CVPR 2022) is a torchvision ResNet-50 trunk whose average pool is replaced by GeM
pooling (p=3), a 2048 -> 512 linear layer and L2 normalisation; images are ImageNet-normalised with the
short side resized to 288. Its released files load here as they are:
  - `*.torchscript.pt` (e.g. sscd_disc_mixup.torchscript.pt): a standalone TorchScript model;
  - `*.torchvision.pt`: a state_dict for `SSCDResNet50` (keys `backbone.*`).
CLIP / DINO use a local transformers folder (CLIPVisionModelWithProjection's image_embeds; a ViT's CLS
token for DINO) with that folder's image processor. DINOv2 (transformers' Dinov2Model, from a hub name such as
facebook/dinov2-base or a local folder) uses its pooled output, the layer-normed CLS token.

Licenses of the weights matter to who may run the audit: SSCD's released models are CC-BY-NC 4.0, so a company
auditing a commercial model may not be allowed to use them; DINOv2's are Apache-2.0. `WEIGHTS_LICENSES` is
logged by the job and written into its report. A descriptor other than SSCD needs its own copy threshold:
eval.replication.calibrate measures one.

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
DESCRIPTORS = ("sscd", "dinov2", "clip", "dino")
# The license of the released weights each descriptor loads (what a user must check before running it).
WEIGHTS_LICENSES = {
    "sscd": "CC-BY-NC-4.0 (facebookresearch/sscd-copy-detection model files): non-commercial use only",
    "dinov2": "Apache-2.0 (facebook/dinov2-* weights)",
    "clip": "depends on the checkpoint: openai/clip-* MIT; LAION OpenCLIP MIT; check its model card",
    "dino": "Apache-2.0 (facebook/dino-* weights)",
}


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
                 device: torch.device, output: Callable = lambda out: out, license: str = ""):
        self.name = name
        self.license = license
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


def _tiny_config(kind: str):
    """Tiny random models (tests): 64 px images, 32-d descriptors."""
    from transformers import CLIPVisionConfig, Dinov2Config, ViTConfig

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=8)
    if kind == "clip":
        return CLIPVisionConfig(**common, projection_dim=32)
    return Dinov2Config(**common) if kind == "dinov2" else ViTConfig(**common)


def _load_hf(kind: str, weights: Optional[str], random_weights: bool, seed: int):
    from transformers import AutoImageProcessor, BitImageProcessor, CLIPImageProcessor, CLIPVisionModelWithProjection
    from transformers import Dinov2Model, ViTImageProcessor, ViTModel

    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            config = _tiny_config(kind)
            if kind == "clip":
                model = CLIPVisionModelWithProjection(config)
                processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
            elif kind == "dinov2":
                model = Dinov2Model(config)
                processor = BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                              image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
            else:
                model = ViTModel(config, add_pooling_layer=False)
                processor = ViTImageProcessor(size={"height": 64, "width": 64})
    else:
        # DINOv2 also loads from a hub name (cached on this machine, or fetched where the hub is reachable)
        is_name = kind == "dinov2" and weights and not os.path.isabs(weights) and not os.path.exists(weights) \
            and weights.count("/") == 1
        if not is_name and (not weights or not os.path.isfile(os.path.join(weights, "config.json"))):
            model_name = {"clip": "CLIPVisionModelWithProjection / CLIPModel", "dino": "ViTModel (e.g. facebook/dino-vitb16)",
                          "dinov2": "Dinov2Model (e.g. facebook/dinov2-base)"}[kind]
            raise FileNotFoundError(
                f"place a transformers {model_name} folder (config.json, weights, preprocessor_config.json) "
                f"at {weights or '<replication.weights>'}"
            )
        if kind == "clip":
            model = CLIPVisionModelWithProjection.from_pretrained(weights, local_files_only=True)
        elif kind == "dinov2":
            model = Dinov2Model.from_pretrained(weights, local_files_only=not is_name)
        else:
            model = ViTModel.from_pretrained(weights, add_pooling_layer=False, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(weights, local_files_only=not is_name)
    if kind == "clip":
        output = lambda out: out.image_embeds  # noqa: E731
    elif kind == "dinov2":
        output = lambda out: out.pooler_output  # noqa: E731  the layer-normed CLS token
    else:
        output = lambda out: out.last_hidden_state[:, 0]  # noqa: E731  DINO's descriptor is the CLS token
    return model.eval(), _HFTransform(processor), output


def build_descriptor(kind: str, weights: Optional[str], device: torch.device, *, random_weights: bool = False,
                     resize: int = SSCD_RESIZE, seed: int = 0) -> ImageDescriptor:
    if kind not in DESCRIPTORS:
        raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {kind!r}")
    tag = "random" if random_weights else os.path.basename(os.path.normpath(weights or ""))
    license = WEIGHTS_LICENSES[kind]
    if kind == "sscd":
        model = load_sscd_model(weights, random_weights, seed).to(device)
        return ImageDescriptor(f"sscd:{tag}@{resize}", model, sscd_transform(resize), device, license=license)
    model, transform, output = _load_hf(kind, weights, random_weights, seed)
    return ImageDescriptor(f"{kind}:{tag}", model.to(device), transform, device, output, license=license)
