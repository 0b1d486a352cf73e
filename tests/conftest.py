import os

# Tests never reach a hub: everything is built from config or read from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread per test process (and, through the environment, per subprocess the tests start): tests use
# tiny tensors, where a second intra-op thread only adds synchronisation, and `make test` already runs two
# xdist workers on two cores. With two threads per process on busy cores a tiny UNet training step cost
# ~40x the CPU time (threads spin waiting for each other). Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _retry_on_prefix_race(get_shm_prefix):
    """Streaming picks the first shared-memory prefix no running dataset holds, then creates it; two xdist
    workers opening datasets at the same moment can pick the same one, and the second create fails with
    FileExistsError (seen as a flaky test). Picking again finds the next free prefix. Safe here because every
    test process is its own local leader (the multi-rank tests run their ranks in subprocesses, unpatched)."""
    import time

    def patched(*args, **kwargs):
        for attempt in range(10):
            try:
                return get_shm_prefix(*args, **kwargs)
            except FileExistsError:
                time.sleep(0.05 * (attempt + 1))
        return get_shm_prefix(*args, **kwargs)

    return patched


import streaming.base.dataset as _streaming_dataset  # noqa: E402

_streaming_dataset.get_shm_prefix = _retry_on_prefix_race(_streaming_dataset.get_shm_prefix)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
