"""Copy a stage's `jpeg` input columns into its output byte for byte.

Why this exists: streaming's MDS reader returns a `jpeg` column as a PIL image opened lazily from the
stored bytes, and its writer re-encodes any PIL image at Pillow's default quality (75), except an image
that was opened from a file, whose file it copies unchanged. A stage that simply passed the decoded image
on would therefore recompress every photo once per stage and the loss would compound along the pipeline.
Streaming offers no way to hand the writer raw bytes for an image column, so this module takes the
file route it does offer: the original bytes go to a temporary file for the moment of the write.

Use:
    with JpegPassthrough(columns) as passthrough:
        for key, sample in iter_mds(...):
            kept = passthrough.capture(sample)   # BEFORE anything decodes the image
            ... decode / use sample["image"] ...
            passthrough.write(writer, key, {**sample, "new_column": value}, kept)
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile

from PIL import Image


def original_jpeg_bytes(image: Image.Image) -> bytes | None:
    """The bytes a lazily opened JPEG was read from, or None once it has been decoded (Pillow drops its
    file object on load) or if it did not come from an in-memory JPEG."""
    fp = getattr(image, "fp", None)
    if getattr(image, "format", None) == "JPEG" and isinstance(fp, io.BytesIO):
        return fp.getvalue()
    return None


class JpegPassthrough:
    """Writes samples whose `jpeg` columns keep the input's exact bytes (see the module docstring).

    Args:
        columns: the output MDS columns (name -> encoding); only the `jpeg` ones are handled.
    """

    def __init__(self, columns: dict[str, str]):
        self.jpeg_columns = [name for name, encoding in columns.items() if encoding == "jpeg"]
        self._dir = tempfile.mkdtemp(prefix="jpeg_passthrough_")
        self.copied = 0  # images written byte for byte
        self.reencoded = 0  # images whose original bytes were unavailable (streaming re-encoded them)

    def capture(self, sample: dict) -> dict[str, bytes]:
        """The original bytes of each `jpeg` column of a freshly read sample. Call before decoding it."""
        kept = {}
        for name in self.jpeg_columns:
            data = original_jpeg_bytes(sample[name]) if name in sample else None
            if data is not None:
                kept[name] = data
        return kept

    def write(self, writer, key: str, sample: dict, kept: dict[str, bytes]) -> None:
        """writer.write(key, sample) with the `jpeg` columns in `kept` stored as those bytes."""
        sample = dict(sample)
        opened, paths = [], []
        try:
            for name in self.jpeg_columns:
                if name not in sample:
                    continue
                if name not in kept:
                    self.reencoded += 1
                    continue
                path = os.path.join(self._dir, f"{len(paths)}.jpg")
                with open(path, "wb") as f:
                    f.write(kept[name])
                paths.append(path)
                # streaming's JPEG encoder copies the file behind a JpegImageFile opened from a path.
                image = Image.open(path)
                opened.append(image)
                sample[name] = image
            writer.write(key, sample)
            self.copied += len(opened)
        finally:
            for image in opened:
                image.close()
            for path in paths:
                os.remove(path)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> JpegPassthrough:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
