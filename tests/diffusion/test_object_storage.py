"""Object storage for real: shards streamed from s3://, checkpoints saved to s3:// and autoresumed from there,
through Streaming's and Composer's own S3 code, against moto's S3-compatible server on 127.0.0.1.

The endpoint is set the way both libraries document it: the S3_ENDPOINT_URL environment variable (read by
Streaming's S3 downloader and by Composer's S3ObjectStore), with the usual AWS_* credential variables.
"""
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from composer.callbacks import CheckpointSaver
from composer.utils import remote_uploader
from transformers import CLIPTokenizer

from diffusion.config import load_config
from diffusion.inference import load_model
from diffusion.train import TrainConfig, build_trainer
from tests.diffusion.conftest import REPO, demo_overrides

moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server",
                                  reason="moto[server] is pinned in requirements/test.txt (make install)")
boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402  (boto3 is there, so botocore is)

DEMO = os.path.join(REPO, "yamls", "demo-cpu.yaml")
BUCKET = "commoncanvas-test"


@pytest.fixture
def s3(monkeypatch):
    """A boto3 client on a fresh moto server (127.0.0.1, a free port the OS picks), stopped after the test."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {"S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_SESSION_TOKEN": "testing"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        client = boto3.client("s3", endpoint_url=endpoint, config=Config(
            connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        server.stop()


def upload_tree(client, folder, prefix):
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            client.upload_file(path, BUCKET, f"{prefix}/{os.path.relpath(path, folder)}")


def keys(client, prefix):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def unet_state(model):
    return {k: v.detach().clone() for k, v in model.unet.state_dict().items()}


class _ThreadPool(ThreadPoolExecutor):
    def __init__(self, max_workers=None, mp_context=None):
        super().__init__(max_workers)


class _ThreadContext:
    """multiprocessing's context API, as RemoteUploader uses it (get_context('spawn').Manager().Event())."""

    def get_context(self, method=None):
        return self

    def Manager(self):  # noqa: N802 - multiprocessing's name
        return self

    def Event(self):  # noqa: N802
        return threading.Event()


def test_train_streams_from_s3_checkpoints_to_s3_and_autoresumes_from_there(demo_dir, tmp_path, s3, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the callbacks write for a remote save folder land in ./<run_name>
    # Composer's checkpoint uploader runs the same S3 upload functions in spawned processes; each one starts
    # with a fresh `import composer` (~8 s of CPU). Threads run those functions here (as use_procs=False does
    # for the logger below).
    monkeypatch.setattr(remote_uploader, "ProcessPoolExecutor", _ThreadPool)
    monkeypatch.setattr(remote_uploader, "multiprocessing", _ThreadContext())
    upload_tree(s3, os.path.join(demo_dir, "data", "latents"), "shapes")  # the demo trains on precomputed latents
    # the CFG empty-caption latents live beside the shards in the recipes: read through Composer's get_file
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(demo_dir, "models", "tokenizer"))
    with open(os.path.join(demo_dir, "models", "text_encoder", "config.json")) as f:
        hidden = json.load(f)["hidden_size"]
    empty = np.full((tokenizer.model_max_length, hidden), 0.25, dtype=np.float32)
    np.save(tmp_path / "empty.npy", empty)
    s3.upload_file(str(tmp_path / "empty.npy"), BUCKET, "shapes/empty_caption_latents.npy")

    save_folder = f"s3://{BUCKET}/runs/s3-test"

    def trainer(batches, cache):
        built = build_trainer(load_config(DEMO, demo_overrides(demo_dir, tmp_path, **{
            "dataset.remote": f"s3://{BUCKET}/shapes", "dataset.local": str(tmp_path / cache),
            "model.empty_caption_latents": f"s3://{BUCKET}/shapes/empty_caption_latents.npy",
            "trainer.save_folder": save_folder, "trainer.save_interval": "2ba", "trainer.autoresume": True,
            "trainer.max_duration": f"{batches}ba", "trainer.seed": 5, "run_name": "s3-test",
            # Composer's uploader for that bucket, in threads: spawning its default upload process costs
            # a fresh `import composer` (~8 s of CPU) per trainer; the S3 code it runs is the same
            "loggers.remote_uploader_downloader.bucket_uri": f"s3://{BUCKET}",
            "loggers.remote_uploader_downloader.use_procs": False,
        }), TrainConfig))
        # Composer polls for the uploaded checkpoint every 30 s before it uploads the `latest` symlink; its
        # checkpoint saver keeps the interval in an attribute for tests to shorten. The upload path is the same.
        for callback in built.state.callbacks:
            if isinstance(callback, CheckpointSaver):
                callback._symlink_upload_wait_before_next_try_in_seconds = 0.5
        return built

    first = trainer(2, "cache-a")
    assert torch.equal(first.state.model.empty_caption_latents, torch.from_numpy(empty))
    first.fit()
    first.close()  # waits for Composer's uploads
    saved = keys(s3, "runs/s3-test/")
    assert "runs/s3-test/train_config.yaml" in saved
    assert any(k.endswith("ba2-rank0.pt") for k in saved), saved
    # Streaming fetched the shards from the bucket into the local cache
    assert any(n.endswith(".mds") for _, _, files in os.walk(tmp_path / "cache-a") for n in files)

    # a new trainer on another machine (no local checkpoint, fresh cache) resumes from the bucket
    assert not os.path.exists(tmp_path / "s3-test" / "latest-rank0.pt")  # nothing local to resume from
    second = trainer(4, "cache-b")
    assert int(second.state.timestamp.batch) == 2
    second.fit()
    second.close()
    assert any(k.endswith("ba4-rank0.pt") for k in keys(s3, "runs/s3-test/"))
    expected = unet_state(second.state.model)

    # eval / generate load the remote checkpoint (Composer's latest symlink) with the config beside it
    loaded = load_model(f"{save_folder}/latest-rank0.pt", ema=True)
    got = unet_state(loaded)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


def test_bucketed_latents_stream_from_s3_one_bucket_per_batch(bucketed_latents, tmp_path, s3):
    """The XL recipes' case: aspect-bucketed latents on object storage, buckets.json read from the bucket."""
    from diffusion.datasets.text_image import build_dataloader

    upload_tree(s3, bucketed_latents, "bucketed")
    loader = build_dataloader(batch_size=8, remote=f"s3://{BUCKET}/bucketed", local=str(tmp_path / "cache"),
                              resolution=32, precomputed_latents=True, aspect_buckets=True, num_workers=0)
    shapes = [tuple(batch["image_latents"].shape) for batch in loader]
    assert len(shapes) == 6 and len(set(shapes)) == 3  # 48 samples in 3 buckets, global batch 8
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(
        n for n in os.listdir(bucketed_latents) if n.startswith("bucket_"))  # one cache folder per bucket stream
