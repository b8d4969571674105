"""Find (and build when missing) the control-plane binaries that hack/ pins."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
            "kwok")


class BuildError(RuntimeError):
    """The control-plane build script failed."""


def repo_root() -> Path:
    """The checkout that holds hack/ and crds/ (SLIPWAY_REPO overrides)."""
    if env := os.environ.get("SLIPWAY_REPO"):
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "hack" / "build-control-plane.sh").exists():
            return parent
    raise BuildError("cannot find the Slipway checkout (hack/build-control-plane.sh); "
                     "set SLIPWAY_REPO")


def ensure_binaries(extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Build what is missing; return (bin dir, KServe CRD dir). Warm runs take seconds."""
    script = repo_root() / "hack" / "build-control-plane.sh"
    env = dict(os.environ, SLIPWAY_TOOLS=" ".join(BINARIES + extra))
    proc = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BuildError(f"{script} failed with exit code {proc.returncode} (see its output above)")
    lines = proc.stdout.strip().splitlines()
    bin_dir = Path(lines[-1])
    kserve_line = next((ln for ln in lines if ln.startswith("kserve-crds=")), None)
    if kserve_line is None:
        raise BuildError(f"{script} did not report the KServe CRD directory")
    return bin_dir, Path(kserve_line.split("=", 1)[1])
