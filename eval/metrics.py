"""FID, KID, CLIP-FID and CLIP score from already extracted features.

FID and KID are clean-fid's own formulas (`fid_from_feats`, `kernel_distance`) on features from clean-fid's
own "clean"-mode loader (eval.features). Its one-call `compute_fid(dir1, dir2, custom_feat_extractor=...)`
gives the same FID (tested) but would extract every folder's features once per metric, and its
`compute_kid` (0.1.35) takes no custom extractor: it always builds, and downloads, its own Inception.
CLIP-FID is the same Fréchet distance on CLIP image embeddings instead of Inception features. CLIP score is computed here
because torchmetrics' CLIPScore clips the *mean* at 0, while the CLIPScore definition (Hessel et al. 2021)
clips each image-caption pair: 100 * max(cos(E_image, E_caption), 0), averaged. It also lets the image
embeddings already extracted for CLIP-FID be reused instead of running CLIP's vision tower twice.
"""
from __future__ import annotations

import numpy as np
from cleanfid.fid import fid_from_feats, kernel_distance


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = images)."""
    return float(fid_from_feats(np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)))


def kid_from_features(
    feats_a: np.ndarray, feats_b: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """Unbiased MMD^2 with kernel (x.y/d + 1)^3, averaged over random subsets of min(n_a, n_b, max_subset_size)."""
    if min(len(feats_a), len(feats_b)) < 2:
        raise ValueError("KID needs at least 2 images in each set")
    # clean-fid draws its subsets from numpy's global RNG: seed it for a reproducible number, then restore it.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return kernel_distance(
            np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64),
            num_subsets=num_subsets, max_subset_size=max_subset_size,
        )
    finally:
        np.random.set_state(state)


def clip_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Per pair: 100 * max(cosine(image_i, text_i), 0)."""
    img = np.asarray(image_embeddings, np.float64)
    txt = np.asarray(text_embeddings, np.float64)
    if img.shape != txt.shape:
        raise ValueError(f"{len(img)} image embeddings of dim {img.shape[1:]} vs {len(txt)} text embeddings of dim {txt.shape[1:]}")
    cos = (img * txt).sum(1) / (np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1))
    return 100.0 * np.maximum(cos, 0.0)


def clip_score(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    return float(clip_scores(image_embeddings, text_embeddings).mean())
