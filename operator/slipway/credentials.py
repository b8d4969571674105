"""Where the API server is and how to authenticate to it: the pod's service account when
running in a cluster, else the current context of a kubeconfig.

Slipway reads these itself instead of through the official client: the operator needs a
server, a CA and one credential, and importing the official client (with the modules it pulls
in) costs the operator about 8 MiB of RSS. Supported, as kubectl does: a bearer token or a
token file, a client certificate and key (as files or inline data), basic auth, an `exec`
credential plugin (EKS, GKE, AKS), `insecure-skip-tls-verify`, relative paths (against the
kubeconfig's own folder) and several files in KUBECONFIG (the first value wins).
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_RELOAD_SECONDS = 60.0  # bound service-account tokens are rotated on disk by the kubelet


class CredentialsError(RuntimeError):
    """No usable API server configuration."""


@dataclass
class Credentials:
    server: str
    ca_file: str | None = None
    ca_data: str | None = None  # base64 PEM, as kubeconfig holds it
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: str | None = None  # base64 PEM
    key_data: str | None = None  # base64 PEM
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    exec_config: dict[str, Any] | None = None
    namespace: str | None = None
    _cached: tuple[str | None, float] = field(default=(None, 0.0), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def authorization(self) -> str | None:
        """The Authorization header's value, refreshed from a token file or an exec plugin
        when the cached one is due."""
        if self.token:
            return f"Bearer {self.token}"
        if self.username is not None:
            basic = f"{self.username}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(basic).decode()
        if not (self.token_file or self.exec_config):
            return None
        with self._lock:
            value, good_until = self._cached
            if value is None or time.monotonic() >= good_until:
                value, good_until = self._fetch_token()
                self._cached = value, good_until
        return f"Bearer {value}" if value else None

    def forget_token(self) -> None:
        """Fetch a fresh token on the next call (after a 401)."""
        with self._lock:
            self._cached = None, 0.0

    def _fetch_token(self) -> tuple[str | None, float]:
        if self.token_file:
            token = Path(self.token_file).read_text().strip()
            return token or None, time.monotonic() + TOKEN_RELOAD_SECONDS
        assert self.exec_config is not None
        return run_exec_plugin(self.exec_config)

    def ssl_context(self) -> ssl.SSLContext:
        # With the cluster's CA, trust it alone, as kubectl does (the system's hundred-odd
        # CAs are not loaded at all: 1 MB or more of the operator's memory).
        ca_data = base64.b64decode(self.ca_data).decode() if self.ca_data else None
        ctx = ssl.create_default_context(cafile=self.ca_file, cadata=None if self.ca_file
                                         else ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert, key = self.cert_file, self.key_file
        if self.cert_data and self.key_data:
            cert, key = _pem_file(self.cert_data), _pem_file(self.key_data)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx


@functools.lru_cache(maxsize=8)
def _pem_file(data: str) -> str:
    """ssl loads a client certificate only from a file: write inline data to a private one,
    once per distinct certificate or key (every reconnect reuses it)."""
    handle, name = tempfile.mkstemp(prefix="slipway-", suffix=".pem")
    with os.fdopen(handle, "wb") as f:  # mkstemp: mode 0600
        f.write(base64.b64decode(data))
    return name


def run_exec_plugin(config: dict[str, Any]) -> tuple[str | None, float]:
    """Run a client.authentication.k8s.io exec plugin; its token and until when it is good."""
    env = {**os.environ, **{e["name"]: e["value"] for e in config.get("env") or []}}
    command = [config["command"], *(config.get("args") or [])]
    try:
        out = subprocess.run(command, env=env, capture_output=True, check=True, timeout=60).stdout
        status = json.loads(out).get("status") or {}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise CredentialsError(f"exec credential plugin {config['command']!r}: {exc}") from exc
    good_until = time.monotonic() + 600.0
    expires = status.get("expirationTimestamp")
    if expires:
        at = datetime.datetime.fromisoformat(expires.replace("Z", "+00:00"))
        left = (at - datetime.datetime.now(datetime.UTC)).total_seconds()
        good_until = time.monotonic() + max(0.0, left - 30.0)  # renew a little early
    return status.get("token"), good_until


def in_cluster(root: Path = SERVICE_ACCOUNT) -> Credentials | None:
    """The pod's service account, as client-go's rest.InClusterConfig reads it."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT")
    if not (host and port and (root / "token").exists()):
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    namespace = root / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_file=str(root / "ca.crt") if (root / "ca.crt").exists() else None,
        token_file=str(root / "token"),
        namespace=namespace.read_text().strip() if namespace.exists() else None)


def from_kubeconfig(paths: str | None = None, context: str | None = None) -> Credentials:
    """The current (or the named) context of *paths* (default: $KUBECONFIG, else
    ~/.kube/config); several files are merged as kubectl merges them."""
    spec = paths or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    files = [Path(p).expanduser() for p in spec.split(os.pathsep) if p]
    merged: dict[str, dict[str, Any]] = {"clusters": {}, "users": {}, "contexts": {}}
    bases: dict[tuple[str, str], Path] = {}  # where each entry's relative paths start
    current = context
    for file in files:
        try:
            doc = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CredentialsError(f"cannot read kubeconfig {file}: {exc}") from exc
        current = current or doc.get("current-context")
        for section, inner in (("clusters", "cluster"), ("users", "user"),
                               ("contexts", "context")):
            for item in doc.get(section) or []:
                if item.get("name") not in merged[section]:
                    merged[section][item["name"]] = item.get(inner) or {}
                    bases[(section, item["name"])] = file.resolve().parent
    if not current:
        raise CredentialsError(f"no current-context in kubeconfig {spec}")
    ctx = merged["contexts"].get(current)
    if ctx is None:
        raise CredentialsError(f"kubeconfig {spec}: context {current!r} not found")
    cluster = merged["clusters"].get(ctx.get("cluster", ""))
    if not cluster or not cluster.get("server"):
        raise CredentialsError(f"kubeconfig {spec}: context {current!r} names no cluster "
                               "with a server")
    user = merged["users"].get(ctx.get("user", ""), {})

    def resolve(section: str, name: str, value: str | None) -> str | None:
        return str(bases[(section, name)] / value) if value else None

    exec_config = user.get("exec")
    if exec_config and exec_config.get("command", "").startswith("."):
        exec_config = {**exec_config,
                       "command": resolve("users", ctx["user"], exec_config["command"])}
    return Credentials(
        server=cluster["server"].rstrip("/"),
        ca_file=resolve("clusters", ctx["cluster"], cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=resolve("users", ctx.get("user", ""), user.get("client-certificate")),
        key_file=resolve("users", ctx.get("user", ""), user.get("client-key")),
        cert_data=user.get("client-certificate-data"),
        key_data=user.get("client-key-data"),
        token=user.get("token"),
        token_file=resolve("users", ctx.get("user", ""), user.get("tokenFile")),
        username=user.get("username"),
        password=user.get("password"),
        exec_config=exec_config,
        namespace=ctx.get("namespace"))


def load(kubeconfig: str | None = None) -> Credentials:
    """An explicit *kubeconfig*, else the service account in a pod, else $KUBECONFIG or
    ~/.kube/config (the official client's order)."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    return in_cluster() or from_kubeconfig()
