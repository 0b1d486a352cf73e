"""The two provenance-watermark benchmark scripts on tiny settings (smoke: their figures are in benchmarks/results)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion.provenance import watermark
from tests.diffusion.conftest import REPO


def run_benchmark(name, *args):
    """In a subprocess from the repo root: `benchmarks` there is the scripts' package, not this test folder."""
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_robustness_benchmark_reports_bit_accuracy(tmp_path):
    done = run_benchmark("watermark_robustness", "--sizes", "256", "--ids", "1", "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.load(open(tmp_path / "watermark_robustness.json"))
    photo_row = next(r for r in result["rows"] if r["kind"] == "photo")
    assert photo_row["bit_accuracy"]["jpeg75"] >= 0.95 and photo_row["id_recovered"]["half"] == 1.0
    assert photo_row["sdxl_dwtdct_chroma_bit_accuracy"]["jpeg75"] < 0.8  # why we do not use SDXL's setting
    assert "| photo | 256 |" in (tmp_path / "watermark_robustness.md").read_text()
    done = run_benchmark("watermark_robustness", "--sizes", "128")  # below the watermark's minimum
    assert done.returncode == 2 and "at least 256" in done.stderr


@pytest.fixture(scope="module")
def exported_demo(tmp_path_factory):
    from diffusion.export import export_pipeline
    from tests.diffusion.conftest import train_demo, write_demo_tree

    root = tmp_path_factory.mktemp("demo")
    write_demo_tree(root, n=32)
    checkpoint, _ = train_demo(str(root), str(root / "train"), batches=1)
    return export_pipeline(checkpoint, str(root / "pipeline"))


def test_eval_effect_benchmark_scores_plain_and_marked_sets(exported_demo, tmp_path):
    done = run_benchmark("watermark_eval_effect", exported_demo, "--n", "4", "--steps", "1", "--work",
                         tmp_path / "work", "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.load(open(tmp_path / "watermark_eval_effect.json"))
    assert result["generated_px"] == 32 and result["size"] == 256 and result["psnr_db"] > 35
    assert set(result["scores"]["fid_vs_reference"]) == {"plain", "marked"}
    assert "measure nothing" in (tmp_path / "watermark_eval_effect.md").read_text()  # random-tiny extractors
    marked = os.path.join(tmp_path, "work", "marked", "0.png")
    assert watermark.decode(np.asarray(Image.open(marked).convert("RGB"))).model_id == result["model_id"]
