import json
import os

import numpy as np
import pytest
from PIL import Image

from data_prep import coco, schema


def make_fake_coco(root, n_images=12, seed=0):
    """A COCO-style captions json + JPEG folder; image i has 1 + i % 3 captions, ids deliberately unordered."""
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "val2014")
    os.makedirs(images_dir)
    images, annotations = [], []
    ann_id = 1000
    for i in range(n_images):
        image_id = 500 - 7 * i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (24 + i, 32, 3), dtype=np.uint8)).save(os.path.join(images_dir, name))
        images.append({"id": image_id, "file_name": name, "width": 32, "height": 24 + i})
        for c in range(1 + i % 3):
            annotations.append({"id": ann_id, "image_id": image_id, "caption": f"image {image_id} caption {c} "})
            ann_id += 1
    ann_path = os.path.join(root, "captions_val2014.json")
    with open(ann_path, "w") as f:
        json.dump({"images": images, "annotations": annotations[::-1]}, f)
    return ann_path, images_dir


def read_mds(path):
    from streaming import LocalDataset

    ds = LocalDataset(local=path)
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def fake(tmp_path):
    return make_fake_coco(str(tmp_path))


def test_writes_distinct_images_with_their_own_captions_and_original_bytes(fake, tmp_path):
    ann, images = fake
    out = str(tmp_path / "mds")
    assert coco.main(["--annotations", ann, "--images", images, "--out", out, "--n", "7", "--seed", "3", "--part-size", "3"]) == 0
    rows = read_mds(out)
    assert len(rows) == 7
    ids = [r[coco.IMAGE_ID] for r in rows]
    assert len(set(ids)) == 7
    with open(ann) as f:
        data = json.load(f)
    captions = {a["id"]: (a["image_id"], a["caption"].strip()) for a in data["annotations"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    for r in rows:
        assert captions[r[coco.CAPTION_ID]] == (r[coco.IMAGE_ID], r[schema.CAPTION])
        # pixel-identical to the source file: a JPEG re-encode would have changed them
        original = np.asarray(Image.open(os.path.join(images, files[r[coco.IMAGE_ID]])))
        assert r[schema.IMAGE].format == "JPEG"
        assert np.array_equal(np.asarray(r[schema.IMAGE]), original)
    # parts of 3 samples, merged into one index
    assert sorted(d for d in os.listdir(out) if d.startswith("part_")) == ["part_00000", "part_00001", "part_00002"]


def test_subset_is_seeded_and_prefix_stable(fake):
    ann, _ = fake
    _, captions = coco.load_captions(ann)
    a = coco.choose_subset(captions, 8, seed=0)
    assert a == coco.choose_subset(captions, 8, seed=0)
    assert coco.choose_subset(captions, 5, seed=0) == a[:5]
    assert coco.choose_subset(captions, 8, seed=1) != a
    # over several seeds every caption of a 3-caption image gets picked at least once: the caption is drawn
    picked = {c for s in range(30) for (_, c, _) in coco.choose_subset(captions, 12, seed=s)}
    assert len(picked) > 12


def test_rerun_resumes_and_rejects_a_different_subset(fake, tmp_path, capsys):
    ann, images = fake
    out = str(tmp_path / "mds")
    args = ["--annotations", ann, "--images", images, "--out", out, "--n", "6", "--part-size", "4"]
    assert coco.main(args) == 0
    first = read_mds(out)
    # an interrupted second part: its index.json is gone, the first part must be kept untouched
    os.remove(os.path.join(out, "part_00001", "index.json"))
    part0 = os.path.join(out, "part_00000", "index.json")
    mtime = os.stat(part0).st_mtime_ns
    assert coco.main(args) == 0
    assert os.stat(part0).st_mtime_ns == mtime
    assert [r[coco.IMAGE_ID] for r in read_mds(out)] == [r[coco.IMAGE_ID] for r in first]
    assert coco.main(args[:-4] + ["--n", "5", "--part-size", "4"]) == 2
    assert "already holds a different subset" in capsys.readouterr().err


def test_bad_inputs_fail_with_one_line_naming_the_file(fake, tmp_path, capsys):
    ann, images = fake
    out = str(tmp_path / "mds")
    victim = sorted(os.listdir(images))[0]
    os.remove(os.path.join(images, victim))
    assert coco.main(["--annotations", ann, "--images", images, "--out", out, "--n", "12"]) == 2
    err = capsys.readouterr().err.strip()
    assert victim in err and len(err.splitlines()) == 1

    assert coco.main(["--annotations", ann, "--images", images, "--out", out, "--n", "13"]) == 2
    assert "exceeds the 12 captioned images" in capsys.readouterr().err

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert coco.main(["--annotations", str(bad), "--images", images, "--out", out]) == 2
    assert str(bad) in capsys.readouterr().err

    bad.write_text(json.dumps({"images": []}))
    assert coco.main(["--annotations", str(bad), "--images", images, "--out", out]) == 2
    assert "annotations" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        coco.main(["--help"])
    assert e.value.code == 0
    assert "--annotations" in capsys.readouterr().out
