"""The local model store of the dev platform: storage URIs mapped to folders.

A real cluster reads models from object stores and volumes (KServe's storage
initializer downloads them to /mnt/models). This machine reaches no object store, so
every URI maps to a folder under the cluster's directory, and the same URI always maps
to the same folder: a TrainingJob that writes `s3://models/churn/v3` and a
ModelDeployment that serves it meet there, with no URI rewritten in any manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

# Schemes KServe's storage initializer accepts and that map cleanly onto a folder.
SCHEMES = ("s3", "gs", "pvc", "file", "http", "https", "hf")


class StoreError(ValueError):
    """The URI cannot be mapped into the local store (unknown scheme, or '..')."""


def local_path(root: Path, uri: str, namespace: str | None = None) -> Path:
    """The folder under *root* that stands for *uri*.

    - `s3://bucket/key` -> `root/s3/bucket/key` (likewise gs, http, https, hf);
    - `pvc://claim/path` -> `root/pvc/<namespace>/claim/path` (claims are namespaced);
    - `file:///abs/path` -> `root/file/abs/path`.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise StoreError(f"storage URI {uri!r}: scheme {scheme or '(none)'!r} is not one of "
                         f"{', '.join(SCHEMES)}")
    segments = [s for s in f"{parts.netloc}/{parts.path}".split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise StoreError(f"storage URI {uri!r} must not contain '.' or '..' segments")
    if scheme == "pvc":
        segments = [namespace or "default", *segments]
    if not segments:
        raise StoreError(f"storage URI {uri!r} names no bucket or path")
    return root.joinpath(scheme, *segments)


def upload_example_model(root: Path, uri: str, fmt: str, namespace: str | None = None,
                         quality: str = "good", extra_args: Sequence[str] = ()) -> Path:
    """Train a small model with the example trainer and put it at *uri* in the local store:
    what `aws s3 cp model.joblib s3://...` does on a real platform. Returns the folder."""
    import subprocess

    from slipway.devcluster.serving import runtimes_venv

    target = local_path(root, uri, namespace)
    trainer = runtimes_venv() / "bin" / "slipway-example-trainer"
    subprocess.run([str(trainer), "--format", fmt, "--quality", quality,
                    "--output-dir", str(target), *extra_args], check=True, capture_output=True)
    return target
