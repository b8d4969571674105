"""slipway.credentials and slipway.kube's transport, against real files, a real exec plugin
and a real local HTTP server."""

from __future__ import annotations

import base64
import http.server
import json
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway import credentials, kube
from slipway.devcluster.certs import write_pki


def _write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_kubeconfig_current_context_relative_paths_and_merge(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    first = _write(tmp_path / "conf" / "a.yaml", {
        "current-context": "dev",
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u",
                                                 "namespace": "ml"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443/",
                                               "certificate-authority": "pki/ca.crt"}}],
        "users": [{"name": "u", "user": {"client-certificate": "pki/me.crt",
                                         "client-key": "/abs/me.key"}}],
    })
    # A second file: its current-context and its entry for "c" lose to the first file's.
    second = _write(tmp_path / "b.yaml", {
        "current-context": "other",
        "clusters": [{"name": "c", "cluster": {"server": "https://wrong"}}],
        "users": [{"name": "v", "user": {"token": "t"}}],
    })
    creds = credentials.from_kubeconfig(f"{first}:{second}")
    assert creds.server == "https://10.0.0.1:6443"
    assert creds.ca_file == str(tmp_path / "conf" / "pki" / "ca.crt")
    assert creds.cert_file == str(tmp_path / "conf" / "pki" / "me.crt")
    assert creds.key_file == "/abs/me.key"
    assert creds.namespace == "ml"
    assert creds.authorization() is None  # a client certificate, no header


def test_kubeconfig_errors_name_what_is_missing(tmp_path: Path) -> None:
    path = _write(tmp_path / "k.yaml", {"current-context": "gone", "contexts": []})
    with pytest.raises(credentials.CredentialsError, match="context 'gone' not found"):
        credentials.from_kubeconfig(path)
    with pytest.raises(credentials.CredentialsError, match="cannot read kubeconfig"):
        credentials.from_kubeconfig(str(tmp_path / "absent.yaml"))


def test_token_file_is_read_again_after_forget(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    creds = credentials.Credentials(server="https://x", token_file=str(token))
    assert creds.authorization() == "Bearer one"
    token.write_text("two")
    assert creds.authorization() == "Bearer one"  # cached until due
    creds.forget_token()
    assert creds.authorization() == "Bearer two"


def test_basic_auth() -> None:
    creds = credentials.Credentials(server="https://x", username="ada", password="pw")
    assert creds.authorization() == "Basic " + base64.b64encode(b"ada:pw").decode()


def test_inline_client_certificate_is_written_once_and_loads(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    data = {k: base64.b64encode(pki[k].read_bytes()).decode()
            for k in ("ca.crt", "admin.crt", "admin.key")}
    before = set(Path(tempfile.gettempdir()).glob("slipway-*.pem"))
    for _ in range(3):  # every reconnect builds a context: the key is written once
        ctx = credentials.Credentials(server="https://x", ca_data=data["ca.crt"],
                                      cert_data=data["admin.crt"],
                                      key_data=data["admin.key"]).ssl_context()
    assert ctx.cert_store_stats()["x509_ca"] == 1  # the cluster's CA alone, as kubectl
    assert credentials.Credentials(server="https://x", ca_file=str(pki["ca.crt"])) \
        .ssl_context().cert_store_stats()["x509_ca"] == 1
    written = set(Path(tempfile.gettempdir()).glob("slipway-*.pem")) - before
    assert len(written) == 2  # the certificate and its key (fresh ones: write_pki's)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in written)
    for path in written:
        path.unlink()


def test_exec_plugin_token_is_cached_until_it_expires(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"""
import json, os, pathlib
runs = pathlib.Path({str(runs)!r})
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": "tok-" + os.environ["WHO"] + str(len(runs.read_text())),
                             "expirationTimestamp": "2999-01-01T00:00:00Z"}}}}))
""")
    path = _write(tmp_path / "k.yaml", {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://x"}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
            "args": [str(plugin)], "env": [{"name": "WHO", "value": "ada"}]}}}],
    })
    creds = credentials.from_kubeconfig(path)
    assert creds.authorization() == "Bearer tok-ada1"
    assert creds.authorization() == "Bearer tok-ada1"  # not run again: it has not expired
    creds.forget_token()
    assert creds.authorization() == "Bearer tok-ada2"


def test_exec_plugin_failure_is_a_credentials_error(tmp_path: Path) -> None:
    creds = credentials.Credentials(server="https://x", exec_config={
        "command": str(tmp_path / "no-such-plugin")})
    with pytest.raises(credentials.CredentialsError, match="no-such-plugin"):
        creds.authorization()


def test_in_cluster_reads_the_service_account(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("slipway-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    creds = credentials.in_cluster(tmp_path)
    assert creds is not None
    assert creds.server == "https://[fd00::1]:443"
    assert creds.namespace == "slipway-system" and creds.ca_file is None
    assert creds.authorization() == "Bearer sa-token"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert credentials.in_cluster(tmp_path) is None  # not in a pod


# --- slipway.kube's transport against a real HTTP server --------------------------------


class _Server(http.server.BaseHTTPRequestHandler):
    """Accepts only the token named in `good`; records what it saw."""

    good = "fresh"
    seen: list[tuple[str, str, str | None, bytes]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        self.seen.append((self.command, self.path, auth, body))
        status, payload = (200, {"kind": "Thing", "path": self.path})
        if auth != f"Bearer {self.good}":
            status, payload = 401, {"kind": "Status", "message": "Unauthorized"}
        elif "missing" in self.path:
            status, payload = 404, {"kind": "Status", "message": "not found"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("stale")
    kubeconfig = _write(tmp_path / "k.yaml", {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {
            "server": f"http://127.0.0.1:{httpd.server_address[1]}"}}],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
    })
    _Server.seen = []
    kube.connect(kubeconfig)
    yield kubeconfig, token
    kube._connection = None
    httpd.shutdown()


def test_a_401_fetches_a_fresh_token_and_tries_once_more(server: tuple[str, Path]) -> None:
    _, token = server
    token.write_text("fresh")  # rotated on disk after the client cached "stale"
    kube.connection()[1]._cached = ("stale", float("inf"))
    result = kube.call("PATCH", "/apis/x/v1/things/a", {"spec": {"n": 1}},
                       "application/merge-patch+json", [("fieldManager", "slipway")])
    assert result == {"kind": "Thing", "path": "/apis/x/v1/things/a?fieldManager=slipway"}
    assert [(m, auth, body) for m, _, auth, body in _Server.seen] == [
        ("PATCH", "Bearer stale", b'{"spec": {"n": 1}}'),
        ("PATCH", "Bearer fresh", b'{"spec": {"n": 1}}')]


def test_errors_keep_the_status_and_the_server_message(server: tuple[str, Path]) -> None:
    _, token = server
    token.write_text("fresh")
    assert kube.call("GET", "/api/v1/missing") is None  # a 404 on GET
    _Server.good = "never"
    try:
        with pytest.raises(kube.KubeError, match="401 Unauthorized") as err:
            kube.call("GET", "/api/v1/x")
    finally:
        _Server.good = "fresh"
    assert err.value.status == 401
    assert len(_Server.seen) == 3  # a 401 is tried again once, not in a loop
