"""Evaluation of trained models: image-quality metrics per guidance scale and a training-data replication audit.

- `eval.metrics`: FID / KID (clean-fid, "clean" mode), CLIP-FID and CLIP score from features.
- `eval.extractors`: the feature models, loaded only from local files (no download, ever).
- `eval.results`: metrics for {guidance scale: image folder} -> results JSON + FID-vs-CLIP-score plot.
- `eval.fid_clip_job` / `eval.replication.job`: the config dataclasses and `run(cfg)` entry points of the
  two eval jobs (yamls/eval-fid-clip.yaml, yamls/eval-replication.yaml).
"""
