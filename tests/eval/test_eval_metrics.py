import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from eval.extractors import random_tiny_clip, random_tiny_fid_extractor
from eval.features import extract_features
from eval.images import list_images
from eval.metrics import clip_score, clip_scores, fid_from_features, kid_from_features

from eval_testdata import synthetic_image, write_folder


def fid_direct(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def kid_direct(x, y):
    """Unbiased MMD^2, kernel k(a, b) = (a.b / d + 1)^3, all pairs."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("sets")
    a = write_folder(root / "a", [synthetic_image(rng, 64) for _ in range(24)])
    b = write_folder(root / "b", [synthetic_image(rng, 80).rotate(90) for _ in range(24)])
    return a, b


@pytest.fixture(scope="module")
def tiny_feats(folders):
    extractor = random_tiny_fid_extractor(torch.device("cpu"))
    return [extract_features(list_images(f), extractor, batch_size=8) for f in folders]


def test_features_are_cleanfid_clean_resize_then_model(folders):
    from cleanfid.resize import build_resizer

    extractor = random_tiny_fid_extractor(torch.device("cpu"))
    files = list_images(folders[0])[:3]
    feats = extract_features(files, extractor, batch_size=2)
    resize = build_resizer("clean")  # PIL bicubic to 299x299 on float channels
    batch = torch.stack([torch.from_numpy(resize(np.asarray(Image.open(f).convert("RGB")))).permute(2, 0, 1) for f in files])
    with torch.no_grad():
        direct = extractor.fn(batch.float()).numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)


def test_fid_of_a_set_with_itself_is_zero(tiny_feats):
    a, b = tiny_feats
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-3 * fid_from_features(a, b))
    assert fid_from_features(a, b) > 0


def test_fid_matches_the_scipy_sqrtm_formula(tiny_feats):
    a, b = tiny_feats
    assert fid_from_features(a, b) == pytest.approx(fid_direct(a.astype(np.float64), b.astype(np.float64)), rel=1e-5)
    rng = np.random.default_rng(0)  # well-conditioned case: more samples than dimensions
    x, y = rng.normal(size=(300, 16)), rng.normal(0.3, 1.2, size=(250, 16))
    assert fid_from_features(x, y) == pytest.approx(fid_direct(x, y), rel=1e-7)


def test_kid_matches_the_unbiased_polynomial_mmd(tiny_feats):
    a, b = (f.astype(np.float64) for f in tiny_feats)
    # equal sizes below the subset size: every subset is the whole set, so KID is the full unbiased MMD^2
    assert kid_from_features(a, b, num_subsets=3) == pytest.approx(kid_direct(a, b), rel=1e-8)
    assert kid_from_features(a, a, num_subsets=3) == pytest.approx(kid_direct(a, a), abs=1e-9)


def test_kid_subsets_are_seeded_and_leave_the_global_rng_alone():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.normal(0.5, size=(40, 8))
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    first = kid_from_features(x, y, num_subsets=5, max_subset_size=20, seed=7)
    assert np.random.rand() == expected_next
    assert kid_from_features(x, y, num_subsets=5, max_subset_size=20, seed=7) == first
    assert kid_from_features(x, y, num_subsets=5, max_subset_size=20, seed=8) != first


def test_clip_scores_clip_each_pair_at_zero():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    txt = np.array([[2.0, 0.0], [-1.0, 0.0], [4.0, 3.0]])
    np.testing.assert_allclose(clip_scores(img, txt), [100.0, 0.0, 96.0])
    assert clip_score(img, txt) == pytest.approx(196.0 / 3)


def test_clip_pipeline_matches_direct_cosine(folders):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    clip = random_tiny_clip(torch.device("cpu"))
    files = list_images(folders[1])[:6]
    prompts = ["red circle", "blue square on green", "a photo", "yellow", "tiny ring", "the big cross"]
    image_emb = extract_features(files, clip.image_extractor(), batch_size=4)
    text_emb = clip.embed_texts(prompts, batch_size=4)

    pixels = []
    for f in files:
        im = TF.center_crop(TF.resize(Image.open(f).convert("RGB"), 32, InterpolationMode.BICUBIC), 32)
        pixels.append(TF.normalize(TF.to_tensor(np.array(im)), clip.mean.flatten().tolist(), clip.std.flatten().tolist()))
    with torch.no_grad():
        direct_img = clip.model.get_image_features(pixel_values=torch.stack(pixels)).numpy()
        tokens = clip.tokenizer(prompts, padding=True, return_tensors="pt")
        direct_txt = clip.model.get_text_features(**tokens).numpy()
    np.testing.assert_allclose(image_emb, direct_img, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(text_emb, direct_txt, rtol=1e-4, atol=1e-5)
    cos = (direct_img * direct_txt).sum(1) / np.linalg.norm(direct_img, axis=1) / np.linalg.norm(direct_txt, axis=1)
    assert clip_score(image_emb, text_emb) == pytest.approx(100 * np.maximum(cos, 0).mean(), abs=1e-3)


def test_same_fid_as_cleanfid_compute_fid_with_the_extractor(folders, tiny_feats):
    from cleanfid import fid as cleanfid_fid

    extractor = random_tiny_fid_extractor(torch.device("cpu"))
    expected = cleanfid_fid.compute_fid(*folders, mode="clean", custom_feat_extractor=extractor.fn, num_workers=0,
                                        batch_size=8, device=torch.device("cpu"), verbose=False)
    assert fid_from_features(*tiny_feats) == pytest.approx(expected, rel=1e-5)
