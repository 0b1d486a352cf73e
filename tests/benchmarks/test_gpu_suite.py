"""benchmarks.gpu_suite: the batch search's logic, and --quick end to end on CPU (tiny models, fp32).

The --quick run is a smoke test of every part's real code path; its numbers are not performance claims."""
import json

import pytest

from benchmarks import gpu_suite
from benchmarks.gpu.training import Probe, SearchLimits, largest_batch


def fake_probe(fits_up_to: int, fixed: int = 1000, per_image: int = 10, step_s_per_image: float = 0.001):
    calls = []

    def probe(b):
        calls.append(b)
        if b > fits_up_to:
            return Probe(b, False, error="out of memory")
        return Probe(b, True, step_s=step_s_per_image * b, peak_bytes=fixed + per_image * b)
    return probe, calls


def test_batch_search_jumps_by_the_memory_line_then_bisects():
    # the memory line predicts 200 fit, but only 150 do (fragmentation, workspace): bisect between them
    probe, calls = fake_probe(fits_up_to=150)
    batch, limited, probes = largest_batch(probe, SearchLimits(8, 4096, 10.0, 60.0), memory_bytes=1000 + 10 * 200,
                                           clock=lambda: 0.0)
    assert limited == "memory" and 150 - 150 // 16 <= batch <= 150
    assert calls[:3] == [8, 16, 200]  # two probes fit the line, the third jumps to its prediction
    assert len(calls) <= 8 and all(p.ok == (p.batch <= 150) for p in probes)


def test_batch_search_respects_step_time_cap_and_start_oom():
    probe, _ = fake_probe(fits_up_to=10_000, step_s_per_image=0.01)
    batch, limited, _ = largest_batch(probe, SearchLimits(8, 4096, 0.5, 60.0), memory_bytes=None, clock=lambda: 0.0)
    assert limited == "step_time" and 50 <= batch <= 64
    probe, calls = fake_probe(fits_up_to=3)
    batch, limited, _ = largest_batch(probe, SearchLimits(16, 16, 10.0, 60.0), memory_bytes=None, clock=lambda: 0.0)
    assert (batch, limited) == (2, "memory") or (batch, limited) == (3, "memory")
    assert calls[:3] == [16, 8, 4]  # halved from an OOM start


def test_batch_search_raises_on_a_real_error():
    with pytest.raises(RuntimeError, match="boom"):
        largest_batch(lambda b: Probe(b, False, error="ValueError: boom"), SearchLimits(8, 64, 1.0, 60.0), None,
                      clock=lambda: 0.0)


def test_quick_suite_runs_every_part_on_cpu(tmp_path):
    result = gpu_suite.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert set(result["parts"]) == {"a", "b", "c", "d", "e", "loader"}
    for key, part in result["parts"].items():
        assert "error" not in part, (key, part["error"])
        for row in part["rows"]:
            assert "error" not in row, row
    rows = {r["name"]: r for r in result["rows"]}
    assert [n for n in rows if n.startswith("train_tiny_32_")] == [f"train_tiny_32_{k}" for k in "abcdef"]
    for name in ("train_tiny_32_a", "train_tiny_32_f", "latents_tiny_32", "caption_blip2_tiny",
                 "replication_search_256x10000", "recipe_commoncanvas_s_c", "dataloader_latents_32"):
        rate = next(rows[name][k] for k in ("images_per_s", "samples_per_s", "queries_per_s") if k in rows[name])
        assert rate > 0, name
    assert rows["train_tiny_32_a"]["speedup_vs_naive"] == 1.0 and 0 < rows["train_tiny_32_d"]["mfu"]
    recipe = rows["recipe_commoncanvas_s_c"]
    assert recipe["loss_finite"] and recipe["resume_ok"] and recipe["fsdp"] is False
    assert rows["replication_search_256x10000"]["planted_found_at_rank1"] == 1.0
    assert result["performance_claim"] is False and all(t["met"] in (None, True) for t in result["targets"])
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "Not a performance claim" in md and "| train_tiny_32_f |" in md and "## Targets" in md


def test_unknown_part_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_suite.main(["--quick", "--parts", "a,z", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "unknown part" in capsys.readouterr().err


# ---- the wheel folder for a GPU machine without a registry (benchmarks/gpu/check_wheels.py) ----------------
def _touch(folder, *names, size=1):
    for name in names:
        (folder / name).write_bytes(b"x" * size)


def test_wheel_folder_check_finds_missing_duplicate_foreign_and_mismatched(tmp_path, monkeypatch):
    from benchmarks.gpu import check_wheels as cw

    pins = {"omegaconf": "2.3.1", "tokenizers": "0.22.2", "zstd": "1.5.6.1", "coolname": "2.2.0"}
    _touch(tmp_path, "omegaconf-2.3.1-py3-none-any.whl", "tokenizers-0.22.2-cp39-abi3-manylinux_2_17_x86_64.whl",
           "zstd-1.5.6.1-cp312-cp312-manylinux2014_x86_64.whl", "coolname-2.2.0-py2.py3-none-any.whl")
    problems, info = cw.check_folder(str(tmp_path), pins, {"omegaconf": "2.3.1", "zstd": "1.5.7.2"})
    assert problems == [] and info["bytes"] == 4  # zstd may differ from requirements (wheels.txt says why)
    assert info["wheels"]["tokenizers"]["loads_here"] and not info["wheels"]["zstd"]["loads_here"]

    (tmp_path / "coolname-2.2.0-py2.py3-none-any.whl").unlink()
    _touch(tmp_path, "omegaconf-2.3.0-py3-none-any.whl", "extra-1.0-cp312-cp312-macosx_11_0_arm64.whl")
    problems, _ = cw.check_folder(str(tmp_path), pins, {"tokenizers": "0.22.1"})
    text = "\n".join(problems)
    assert "coolname==2.2.0: no wheel" in text and "two wheels of omegaconf" in text
    assert "extra-1.0-cp312-cp312-macosx_11_0_arm64.whl: not a CPython 3.12 manylinux x86-64 wheel" in text
    assert "not in wheels.txt" in text and "tokenizers: wheels.txt 0.22.2, requirements 0.22.1" in text

    monkeypatch.setattr(cw, "LIMIT_BYTES", 3)
    assert any("over the 64 MiB" in p for p in cw.check_folder(str(tmp_path), pins, {})[0])


def test_wheels_txt_pins_match_requirements():
    from benchmarks.gpu import check_wheels as cw

    pins = cw.read_pins(f"{cw.HERE}/wheels.txt")
    req = {**cw.read_pins(f"{cw.REPO}/requirements/base.txt"), **cw.read_pins(f"{cw.REPO}/requirements/no-deps.txt")}
    shared = {n for n in pins if n in req} - cw.MAY_DIFFER
    assert {"mosaicml", "mosaicml-streaming", "diffusers", "transformers", "tokenizers", "huggingface-hub",
            "omegaconf", "clean-fid"} <= shared
    assert {n: pins[n] for n in shared} == {n: req[n] for n in shared}
    # nothing the GPU machine has in a version we accept is shipped twice: those must not be in wheels.txt
    machine = cw.read_names(f"{cw.HERE}/gpu_machine_packages.txt")
    assert set(pins) & machine == {"transformers", "huggingface-hub", "tokenizers", "torchmetrics"}


def test_batch_search_stops_near_the_predicted_limit_without_creeping():
    probe, calls = fake_probe(fits_up_to=10_000)  # the memory line says 100 fit; 100 runs: no +1 probes
    batch, limited, _ = largest_batch(probe, SearchLimits(8, 4096, 10.0, 60.0), memory_bytes=1000 + 10 * 100,
                                      clock=lambda: 0.0)
    assert (batch, limited) == (96, "memory") and calls == [8, 16, 96]
