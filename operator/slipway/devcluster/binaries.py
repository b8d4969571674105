"""Find (and build when missing) the binaries and assets that hack/ pins."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                 "kubectl", "kwok")
SERVING = ("kserve-manager", "prometheus")


class BuildError(RuntimeError):
    """The build script failed."""


@dataclass(frozen=True)
class Built:
    """Where the build put things: a directory of tool links, KServe's CRDs, ConfigMap and
    webhook manifests, and the Gateway API CRDs."""

    bin: Path
    kserve: Path
    gateway_crds: Path

    @property
    def kserve_crds(self) -> Path:
        return self.kserve / "crds"


def repo_root() -> Path:
    """The checkout that holds hack/ and crds/ (SLIPWAY_REPO overrides)."""
    if env := os.environ.get("SLIPWAY_REPO"):
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "hack" / "build-control-plane.sh").exists():
            return parent
    raise BuildError("cannot find the Slipway checkout (hack/build-control-plane.sh); "
                     "set SLIPWAY_REPO")


def ensure_binaries(extra: tuple[str, ...] = (), serving: bool = True) -> Built:
    """Build what is missing and return where it is. Warm runs take milliseconds."""
    script = repo_root() / "hack" / "build-control-plane.sh"
    tools = CONTROL_PLANE + (SERVING if serving else ()) + extra
    env = dict(os.environ, SLIPWAY_TOOLS=" ".join(tools))
    proc = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BuildError(f"{script} failed with exit code {proc.returncode} (see its output above)")
    lines = proc.stdout.strip().splitlines()
    found = dict(ln.split("=", 1) for ln in lines if "=" in ln)
    try:
        return Built(Path(lines[-1]), Path(found["kserve-assets"]), Path(found["gateway-crds"]))
    except (KeyError, IndexError) as e:
        raise BuildError(f"{script} did not report {e}: {proc.stdout[-500:]}") from e
