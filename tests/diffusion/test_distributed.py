"""Two CPU ranks through Composer's launcher (gloo): each rank gets its own share of the data, every step
trains one aspect bucket on both ranks, and gradients are averaged so both ranks end with identical weights."""
import json
import os
import socket
import subprocess
import sys

from tests.diffusion.conftest import BUCKET_IMAGE_SIZES, BUCKET_IMAGES_EACH, REPO


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_shard_bucketed_data_train_one_bucket_per_step_and_sync_gradients(demo_dir, bucketed_latents,
                                                                                      tmp_path):
    """One launch covers both: DDP over aspect-bucketed latents (issue 12) is the harder case of plain DDP."""
    composer = os.path.join(os.path.dirname(sys.executable), "composer")
    n = BUCKET_IMAGES_EACH * len(BUCKET_IMAGE_SIZES)
    extra = {"dataset.local": bucketed_latents, "dataset.aspect_buckets": True, "trainer.max_duration": f"{n // 8}ba"}
    result = subprocess.run(
        [composer, "-n", "2", "--master_port", str(free_port()), os.path.join(REPO, "tests", "diffusion", "ddp_worker.py"),
         str(tmp_path), demo_dir, json.dumps(extra)],  # one epoch of global batch 8
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["per_rank_batch"] for r in ranks] == [4, 4]  # global batch 8 split over 2 ranks
    assert ranks[0]["shapes"] == ranks[1]["shapes"]  # step by step, both ranks train the same bucket
    assert len({tuple(s) for s in ranks[0]["shapes"]}) == len(BUCKET_IMAGE_SIZES)
    seen0, seen1 = ranks[0]["fingerprints"], ranks[1]["fingerprints"]
    assert not set(seen0) & set(seen1)  # disjoint shares of the data
    assert len(seen0 + seen1) == len(set(seen0 + seen1)) == n  # every sample once in the epoch
    assert ranks[0]["weights_sha"] == ranks[1]["weights_sha"]  # different data, same weights: grads synced
