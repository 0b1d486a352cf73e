"""Two CPU ranks through Composer's launcher (gloo): each rank gets its own share of the data, and
gradients are averaged so both ranks end with identical weights."""
import json
import os
import socket
import subprocess
import sys

from tests.diffusion.conftest import REPO


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_shard_data_and_sync_gradients(demo_dir, tmp_path):
    composer = os.path.join(os.path.dirname(sys.executable), "composer")
    result = subprocess.run(
        [composer, "-n", "2", "--master_port", str(free_port()), os.path.join(REPO, "tests", "diffusion", "ddp_worker.py"),
         str(tmp_path), demo_dir],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["per_rank_batch"] for r in ranks] == [4, 4]  # global batch 8 split over 2 ranks
    seen0, seen1 = set(ranks[0]["fingerprints"]), set(ranks[1]["fingerprints"])
    assert len(seen0) == len(seen1) == 12 and not seen0 & seen1  # disjoint shares of the data
    assert ranks[0]["weights_sha"] == ranks[1]["weights_sha"]  # different data, same weights: grads synced
