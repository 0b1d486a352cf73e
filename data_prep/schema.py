"""MDS column names and encodings written by each data_prep stage and read by diffusion/ and eval/.

One place for the on-disk format, so the writer of a column and its readers cannot drift apart.
Each stage copies every column of its input and adds its own, so attribution survives to the end.
"""

# fetch stage: the image plus every attribution field of the source photo.
IMAGE = "image"
ATTRIBUTION_COLUMNS = {
    "photo_id": "str",
    "title": "str",  # original alt-text (YFCC title); kept beside the synthetic caption
    "description": "str",
    "author_name": "str",
    "author_id": "str",
    "page_url": "str",
    "download_url": "str",
    "license": "str",  # a data_prep.licenses.License value, e.g. "CC-BY"
    "license_name": "str",  # as written in the metadata
    "license_url": "str",
    "orig_width": "int",
    "orig_height": "int",
    "sha256": "str",  # of the original downloaded bytes
}
FETCH_COLUMNS = {IMAGE: "jpeg", **ATTRIBUTION_COLUMNS}

# caption stage ("telephoning"): synthetic caption from BLIP-2.
BLIP2_CAPTION = "blip2_caption"
# demo shapes data carries its ground-truth caption here instead.
CAPTION = "caption"

# latents stage. Image latents are stored ALREADY MULTIPLIED by the VAE's scaling_factor;
# diffusion/ never scales a precomputed latent again (scaling is applied exactly once).
def image_latents_key(resolution: int) -> str:
    return f"latents_{resolution}"


CAPTION_LATENTS = "caption_latents"  # text-encoder last hidden state, (seq_len, dim)
LATENT_ENCODING = "ndarray"  # dtype (float16 by default, float32 on request) travels with the array
EMPTY_CAPTION_LATENTS_FILE = "empty_caption_latents.npy"  # written once beside the shards' index.json
# SDXL (two text encoders): caption_latents holds both encoders' penultimate hidden states concatenated, plus
# the second encoder's projected pooled embedding, and the size/crop the image latents were made with
# (int32 pairs, height first) for micro-conditioning.
POOLED_CAPTION_LATENTS = "pooled_caption_latents"
EMPTY_POOLED_CAPTION_LATENTS_FILE = "empty_pooled_caption_latents.npy"
ORIGINAL_SIZE = "original_size"  # the stored image's (height, width) before the resize to a training resolution


def caption_latents_key(caption_key: str) -> str:
    """Latents of another caption column (`--extra-caption-keys`, e.g. the original title) for multi-caption
    training. Where that caption is empty, has_caption_key(caption_key) is 0 and the array a 1-element
    placeholder (MDS cannot store an empty array)."""
    return f"{CAPTION_LATENTS}_{caption_key}"


def has_caption_key(caption_key: str) -> str:
    return f"has_{caption_key}"


def pooled_caption_latents_key(caption_key: str) -> str:
    return f"{POOLED_CAPTION_LATENTS}_{caption_key}"


def crop_top_left_key(resolution: int) -> str:
    """(top, left) of the square crop, in the image resized to `resolution`, that latents_{res} encode."""
    return f"crop_top_left_{resolution}"

MANIFEST_FILE = "manifest.json"

# filter_metadata stage (before any download): one row per kept photo, as parquet files under
# <out>/photos/ (read them with data_prep.metadata.iter_filtered or pyarrow.parquet.read_table(<out>/photos)).
# Same names as ATTRIBUTION_COLUMNS where they overlap; width/height are null when the source does not say.
FILTERED_METADATA_DIR = "photos"
FILTERED_METADATA_COLUMNS = {
    "photo_id": "str",
    "download_url": "str",
    "page_url": "str",
    "author_name": "str",
    "author_id": "str",
    "title": "str",
    "description": "str",
    "license": "str",  # a data_prep.licenses.License value
    "license_name": "str",
    "license_url": "str",
    "width": "int",
    "height": "int",
}

# commoncatalog stage (data_prep.commoncatalog): the fetch stage's columns, BLIP-2 captions already in the
# CommonCatalog parquet, and the two Hive partition values of the part file each row came from.
PARTITION_COLUMNS = ("least_dim_range", "aspect_ratio_bucket")
COMMONCATALOG_COLUMNS = {**FETCH_COLUMNS, BLIP2_CAPTION: "str", **{name: "str" for name in PARTITION_COLUMNS}}
