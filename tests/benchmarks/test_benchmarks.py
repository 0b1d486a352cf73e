"""The benchmark scripts run their real code path on tiny settings and write consistent tables.

Smoke only: CPU numbers from CI are not performance claims (see benchmarks/README.md)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from benchmarks import dataloader_throughput, report, train_throughput


def test_train_throughput_tiny_rows_and_derived_figures(tmp_path):
    # row d is the bf16 path: tiny UNet at 32 px keeps it cheap on CPUs without bf16 kernels; so does the
    # 64^3 peak matmul (the default 2048^3 takes minutes in bf16 there)
    result = train_throughput.main(["--config", "tiny", "--resolution", "32", "--batch-size", "2", "--steps", "2",
                                    "--warmup", "0", "--rows", "a,c,d", "--peak-size", "64", "--out", str(tmp_path),
                                    "--no-progress"])
    assert [r["key"] for r in result["rows"]] == ["a", "c", "d"]
    rows = {r["key"]: r for r in result["rows"]}
    assert rows["a"]["speedup_vs_a"] == 1.0 and rows["a"]["attention"] == "math"
    assert rows["c"]["speedup_vs_a"] == pytest.approx(rows["c"]["images_per_s"] / rows["a"]["images_per_s"], rel=1e-2)
    flops = result["flops"]
    # the pixel path adds the VAE encoder and text encoder to the same UNet step
    assert 0 < flops["unet_train_step_per_image"] < flops["pixel_path_step_per_image"]
    assert result["peak_matmul"]["bf16"]["n"] == 64 and result["peak_matmul"]["fp32"]["tflops"] > 0
    peak = result["peak_matmul"]["bf16"]["tflops"]
    for r in result["rows"]:
        if peak:
            expected = flops["unet_train_step_per_image"] * r["images_per_s"] / (peak * 1e12)
            assert r["mfu_vs_measured_bf16_peak"] == pytest.approx(expected, rel=1e-2, abs=1e-4)
        else:
            assert r["mfu_vs_measured_bf16_peak"] is None
        assert r["peak_memory_bytes"] > 0 and r["final_loss"] == r["final_loss"]  # finite, not NaN
    saved = json.loads((tmp_path / "train_throughput_tiny_32_cpu.json").read_text())
    assert saved["rows"] == result["rows"]
    table = (tmp_path / "train_throughput_tiny_32_cpu.md").read_text()
    assert "not a performance claim" in table and "| d | + bf16 autocast" in table


def test_derived_figures_are_none_when_a_measured_denominator_is_zero():
    """A CPU without bf16 kernels can measure a peak that rounds to 0, and a row can time at 0 images/s."""
    result = {"device": "cuda", "spec_peak_bf16_tflops": 0,
              "flops": {"unet_train_step_per_image": 10 ** 9, "pixel_path_step_per_image": 2 * 10 ** 9},
              "peak_matmul": {"bf16": {"n": 64, "tflops": 0.0}, "fp32": {"n": 64, "tflops": 0.5}},
              "rows": [{"key": k, "change": k, "notes": [], "images_per_s": rate} for k, rate in (("a", 0.0), ("e", 4.0))]}
    train_throughput.add_derived(result)
    for r in result["rows"]:
        assert r["speedup_vs_a"] is None and r["mfu_vs_measured_bf16_peak"] is None
    assert result["targets_met"] == {"full_stack_speedup_ge_3x": False, "mfu_ge_40pct_vs_measured_peak": False}
    result["peak_matmul"]["bf16"]["tflops"] = 2.0  # a real peak: the MFU is computed again
    train_throughput.add_derived(result)
    assert result["rows"][1]["mfu_vs_measured_bf16_peak"] == pytest.approx(4.0 * 1e9 / 2e12)
    result["peak_matmul"]["bf16"]["tflops"] = 0.0
    train_throughput.add_derived(result)
    result.update(config="tiny", resolution=32, device_name="cpu", machine="m", torch="t", cuda=None, batch_size=2,
                  warmup=0, steps=2, seed=0, command="c")
    row = next(line for line in train_throughput.to_markdown(result).splitlines() if line.startswith("| e |"))
    assert row.count("n/a") == 2  # speed-up and MFU cells
    assert report.safe_ratio(1.0, float("nan")) is None and report.safe_ratio(3.0, 2.0) == 1.5


def test_sd2_flops_match_the_published_per_image_cost(tmp_path):
    """SD2 UNet training step at 256 px: about 0.52 TFLOP per image (the issue's figure, 3 x forward)."""
    result = train_throughput.main(["--config", "sd2", "--resolution", "256", "--flops-only", "--out", str(tmp_path)])
    assert result["unet_params"] == pytest.approx(865.9e6, rel=1e-3)
    assert 0.48e12 < result["flops"]["unet_train_step_per_image"] < 0.58e12
    assert (tmp_path / "train_throughput_sd2_256_flops.md").exists()


def test_train_throughput_rejects_bad_rows(tmp_path):
    with pytest.raises(SystemExit, match="unknown row"):
        train_throughput.main(["--rows", "a,z", "--out", str(tmp_path)])


def test_dataloader_throughput_both_paths(tmp_path):
    result = dataloader_throughput.main(["--samples", "48", "--batch-size", "8", "--resolution", "32", "--image-size",
                                         "64", "--workers", "0,1", "--gpu-rate", "100", "--out", str(tmp_path)])
    assert {(r["path"], r["workers"]) for r in result["rows"]} == {("latents", 0), ("latents", 1), ("jpeg", 0), ("jpeg", 1)}
    assert all(r["samples"] == 40 for r in result["rows"])  # every batch after the first, drop_last
    for path, v in result["verdict"].items():
        worker_rows = [r for r in result["rows"] if r["path"] == path and r["workers"] > 0]
        assert v["per_worker"] == max(r["samples_per_s_per_worker"] for r in worker_rows)
        assert v["at_default_workers"] == pytest.approx(v["per_worker"] * result["default_workers"], abs=0.1)
        assert v["met"] == (v["at_default_workers"] >= 4 * 100)
    assert "| jpeg | 1 |" in (tmp_path / "dataloader_throughput_32.md").read_text()


def test_dataloader_throughput_bad_workers(tmp_path):
    with pytest.raises(SystemExit, match="--workers"):
        dataloader_throughput.main(["--workers", "two", "--out", str(tmp_path)])


def _this_checkouts_benchmark(name: str, monkeypatch):
    """benchmarks.<name> from this checkout. Under pytest the name `benchmarks` is this test folder's package,
    whose missing submodules the editable install's finder then takes from whichever checkout was installed;
    so, for this test only, `benchmarks` is the repo's folder again (monkeypatch restores sys.modules)."""
    root = Path(__file__).resolve().parents[2] / "benchmarks"
    spec = importlib.util.spec_from_file_location("benchmarks", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)
    for module in [m for m in sys.modules if m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "benchmarks", package)
    return importlib.import_module(f"benchmarks.{name}")


def test_commoncatalog_throughput_smoke(tmp_path, monkeypatch):
    commoncatalog_throughput = _this_checkouts_benchmark("commoncatalog_throughput", monkeypatch)
    result = commoncatalog_throughput.main(["--n", "6", "--workers", "1", "--max-side", "0", "512",
                                            "--out", str(tmp_path)])
    runs = {r["max_side"]: r for r in result["runs"]}
    assert set(runs) == {None, 512} and all(r["images"] == 6 and not r["skipped"] for r in runs.values())
    for r in runs.values():
        assert r["images_per_cpu_core_s"] == pytest.approx(r["images"] / r["cpu_s"], rel=0.02)
    assert runs[512]["mds_mb"] < runs[None]["mds_mb"]  # shrunk to a 512px short side: fewer bytes stored
    saved = json.loads((tmp_path / "commoncatalog_throughput.json").read_text())
    assert saved["runs"] == result["runs"] and "| 512 | 1 |" in (tmp_path / "commoncatalog_throughput.md").read_text()
