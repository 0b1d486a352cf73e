"""Optional clients the base install leaves out, and the up-front check that names the profile to install.

Streaming and Composer import their object-store and tracker clients lazily (both are installed with
--no-deps), so a missing one used to surface as `No module named 'boto3'` deep inside training, after the
models were built. `check_config` looks at every value of a job's resolved config before any work: an
`s3://`, `gs://`, `oci://`, `azure://` or `azure-dl://` URI (Streaming's scheme names, which Composer shares
for checkpoints) or a `loggers.wandb` / `loggers.tensorboard` section whose client is not importable fails
with one line naming the key and `make install EXTRAS=<profile>`.

`python -m diffusion.extras --verify cloud` imports every client of a profile (the Makefile runs it after
installing one).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion.config import ConfigError

# profile (requirements/<profile>.txt) -> the modules it provides
PROFILES = {
    "cloud": ("boto3", "google.cloud.storage", "azure.storage.blob", "azure.storage.filedatalake",
              "azure.identity", "libcloud", "oci"),
    "loggers": ("wandb", "tensorboard"),
    "gpu": ("xformers",),
}
# URI scheme -> what Streaming's downloader (shards) and Composer's object store (checkpoints) import for it.
# azure:// is azure-storage-blob (+ azure-identity without an account key) in Streaming, libcloud in Composer.
SCHEMES = {
    "s3": ("boto3",),
    "gs": ("google.cloud.storage",),
    "oci": ("oci",),
    "azure": ("azure.storage.blob", "azure.identity", "libcloud"),
    "azure-dl": ("azure.storage.filedatalake", "azure.identity"),
}
# loggers.<name> -> the module Composer's logger imports (TensorboardLogger goes through torch.utils.tensorboard)
LOGGERS = {"wandb": ("wandb",), "tensorboard": ("tensorboard",)}
PROFILE_OF = {module: profile for profile, modules in PROFILES.items() for module in modules}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # a missing parent package (google, azure) raises instead
        return False


def install_hint(module: str) -> str:
    profile = PROFILE_OF[module]
    return (f"make install EXTRAS={profile} "
            f"(or: pip install -c requirements/constraints.txt -r requirements/{profile}.txt)")


def uri_scheme(value: str) -> str | None:
    head, sep, _ = value.partition("://")
    return head.lower() if sep and head.lower() in SCHEMES else None


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{prefix}{i}.")
    else:
        yield prefix[:-1], node


def needs(cfg) -> list[tuple[str, str, tuple[str, ...]]]:
    """(key, what, modules) for every remote URI and every logger the config uses."""
    try:
        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    found = []
    for key, value in _leaves({k: v for k, v in tree.items() if k != "variables"}):  # variables feed other keys
        if isinstance(value, str) and uri_scheme(value):
            found.append((key, f"{key}={value}", SCHEMES[uri_scheme(value)]))
    for name, modules in LOGGERS.items():
        if (tree.get("loggers") or {}).get(name) is not None:
            found.append((f"loggers.{name}", f"loggers.{name}", modules))
    return found


def check_config(cfg, source: str = "") -> None:
    """ConfigError (one line) for the first remote URI or logger whose client is not installed."""
    for _key, what, modules in needs(cfg):
        for module in modules:
            if not installed(module):
                where = f"{source}: " if source else ""
                raise ConfigError(f"{where}{what} needs {module}, which is not installed: {install_hint(module)}")


def verify(profile: str) -> list[str]:
    """Modules of `profile` that fail to import, with the error."""
    failures = []
    for module in PROFILES[profile]:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an installed but broken client is as useless as a missing one
            failures.append(f"{module}: {type(exc).__name__}: {exc}")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.extras", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verify", choices=sorted(PROFILES), required=True, help="import every client of a profile")
    args = parser.parse_args(argv)
    failures = verify(args.verify)
    for line in failures:
        print(f"error: profile {args.verify}: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
