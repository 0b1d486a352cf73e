"""Single files on object storage (s3://, gs://, oci://, azure://), through Composer's own object stores.

Streaming reads the shards and Composer's Trainer writes checkpoints by itself; these helpers cover the few
files the recipes read or write beside them: the empty-caption latents .npy, `train_config.yaml` next to
remote checkpoints, and a remote checkpoint that export / eval load. Endpoints and credentials come from
the same environment Composer documents (e.g. S3_ENDPOINT_URL and the AWS_* variables for S3).
"""
from __future__ import annotations

import os


def is_remote(path) -> bool:
    """A URI with a scheme other than file:// (local paths and file:// stay with plain file I/O)."""
    head, sep, _ = str(path).partition("://")
    return bool(sep) and head.lower() != "file"


def local_copy(path: str, folder: str) -> str:
    """`path` itself when local, else a download of it into `folder` (a Composer `.symlink` object is followed)."""
    if not is_remote(path):
        return path
    from composer.utils import get_file

    os.makedirs(folder, exist_ok=True)
    destination = os.path.join(folder, os.path.basename(path.rstrip("/")))
    get_file(path, destination, overwrite=True, progress_bar=False)
    return destination


def upload(local_file: str, uri: str) -> None:
    from composer.utils import maybe_create_object_store_from_uri, parse_uri

    store = maybe_create_object_store_from_uri(uri)
    store.upload_object(parse_uri(uri)[2], local_file)
