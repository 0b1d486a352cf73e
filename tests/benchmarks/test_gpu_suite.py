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
