"""Entry point: `composer run.py yamls/NAME.yaml [key.sub=value ...]` (or plain `python run.py ...`).

The yaml's `job` key picks what runs; every job checks its whole config before doing any heavy work.
"""
import importlib
import sys

from omegaconf import OmegaConf

JOBS = {
    "train": "diffusion.train",
    "eval_fid_clip": "eval.fid_clip_job",
    "eval_replication": "eval.replication.job",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + f"\njobs: {', '.join(JOBS)}")
        return 0 if argv else 2
    from diffusion.config import ConfigError, load_config
    from diffusion.extras import check_config

    path, overrides = argv[0], argv[1:]
    try:
        job = OmegaConf.load(path).get("job", "train") if path.endswith((".yaml", ".yml")) else None
        if job not in JOBS:
            raise ConfigError(f"{path}: job must be one of {sorted(JOBS)}, not {job!r}")
        module = importlib.import_module(JOBS[job])
        cfg = load_config(path, overrides, module.CONFIG_SCHEMA)
        check_config(cfg, path)  # remotes and loggers whose clients are not installed, before any model is built
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        module.run(cfg)
    except ConfigError as exc:  # a job's own checks of values the schema cannot judge (paths, combinations)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
