"""Slipway's model servers against MLServer, same models, same machine, same load.

Both serve the same files (a scikit-learn LogisticRegression and an XGBoost binary:logistic
Booster, 20 features) over V2 REST on loopback, driven by the same client in its own process:

- throughput: a closed loop (each of C connections sends its next request as soon as the
  previous answer arrives) at C = 8 and 32, batches of 1 and 32 rows, with p50/p99;
- latency at a fixed rate: open loop (slipway.devcluster.load), p50/p99.

For 1 worker every server is pinned to core 0 and the client to core 1; for 2 workers the
servers get cores 0-1 and the client shares them (a 2-core machine has no third). MLServer is
tried in several settings (parallel_workers 0, its default 1, and 2 with 2 cores; debug off,
i.e. no access log, like ours by default) and its best one is compared with ours. Both servers
run with OMP_NUM_THREADS=1 (one XGBoost thread per process, our server's default). Rounds
alternate the servers (order rotated each round); figures are medians over the rounds.

MLServer runs from its own virtualenv (default ~/.cache/slipway/mlserver-venv, created on
first use; uvloop<0.22 because MLServer 1.7.1 fails to start with newer ones), with the same
scikit-learn and XGBoost versions as runtimes/.venv. Prints a table; asserts nothing.

Usage: python -m bench.mlserver [--rounds 3] [--duration 8] [--models sklearn,xgboost]
                                [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.run import report

REPO = Path(__file__).resolve().parents[1]
RUNTIMES_PY = REPO / "runtimes" / ".venv" / "bin" / "python"
MLSERVER_VENV = Path(
    os.environ.get("SLIPWAY_MLSERVER_VENV", Path.home() / ".cache" / "slipway" / "mlserver-venv")
)
MLSERVER_VERSION = "1.7.1"
FEATURES = 20
MODEL = "m"
START_TIMEOUT = 180.0

# (batch rows, concurrency) of the closed-loop points, and the fixed rates (req/s) per batch.
CLOSED_POINTS = ((1, 8), (1, 32), (32, 8), (32, 32))
FIXED_RATES = {1: 200.0, 32: 100.0}


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _pyval(python: Path, code: str) -> str:
    return _run([str(python), "-c", code]).stdout.strip()


def _versions(python: Path, dists: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        f"out = {{'python': sys.version.split()[0]}}\n"
        f"for d in {dists!r}:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    result: dict[str, str] = json.loads(_pyval(python, code))
    return result


# --- environments -----------------------------------------------------------------------------


def ensure_runtimes_venv() -> None:
    subprocess.run(["bash", str(REPO / "runtimes" / "setup.sh")], check=True)


def ensure_mlserver_venv() -> Path:
    """Create (idempotently) MLServer's virtualenv with our scikit-learn/XGBoost versions."""
    ours = _versions(RUNTIMES_PY, ["scikit-learn", "xgboost-cpu", "xgboost", "numpy"])
    xgb = ours.get("xgboost-cpu") or ours["xgboost"]
    packages = [
        f"mlserver=={MLSERVER_VERSION}",
        f"mlserver-sklearn=={MLSERVER_VERSION}",
        f"mlserver-xgboost=={MLSERVER_VERSION}",
        "uvloop<0.22",  # MLServer 1.7.1 crashes at start with uvloop 0.22+
        f"scikit-learn=={ours['scikit-learn']}",
        f"xgboost=={xgb}",
    ]
    stamp = MLSERVER_VENV / ".slipway-stamp"
    want = hashlib.sha256("\n".join(packages).encode()).hexdigest()
    python = MLSERVER_VENV / "bin" / "python"
    if stamp.is_file() and stamp.read_text().strip() == want and python.exists():
        return MLSERVER_VENV
    print(f"installing MLServer into {MLSERVER_VENV}: {' '.join(packages)}", file=sys.stderr)
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(MLSERVER_VENV)])
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, "--upgrade", "pip"])
    _run([*pip, *packages])
    stamp.write_text(want + "\n")
    return MLSERVER_VENV


# --- models -----------------------------------------------------------------------------------

TRAIN = f"""
import joblib, sys, numpy as np, xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
X, y = make_classification(n_samples=2000, n_features={FEATURES}, n_informative=8,
                           random_state=0)
out = sys.argv[1]
joblib.dump(LogisticRegression(max_iter=1000).fit(X, y), out + "/sklearn/model.joblib")
params = {{"objective": "binary:logistic", "max_depth": 4, "eta": 0.3}}
booster = xgb.train(params, xgb.DMatrix(X.astype(np.float32), label=y), num_boost_round=50)
booster.save_model(out + "/xgboost/model.json")
"""

MLSERVER_IMPL = {
    "sklearn": ("mlserver_sklearn.SKLearnModel", "model.joblib"),
    "xgboost": ("mlserver_xgboost.XGBoostModel", "model.json"),
}
OUR_SERVER = {"sklearn": "slipway-sklearn-server", "xgboost": "slipway-xgboost-server"}


def train_models(root: Path) -> None:
    for kind in MLSERVER_IMPL:
        (root / kind).mkdir(parents=True, exist_ok=True)
    _run([str(RUNTIMES_PY), "-c", TRAIN, str(root)])


# --- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Config:
    """One way of running one server."""

    name: str  # e.g. slipway, mlserver-pw0
    server: str  # slipway | mlserver
    workers: int  # cores given to it (and our --workers)
    settings: dict[str, Any] = field(default_factory=dict)  # MLServer settings.json extras

    def cores(self) -> str:
        return "0" if self.workers == 1 else "0,1"

    def client_cores(self) -> str:
        return "1" if self.workers == 1 else "0,1"


def configs(max_workers: int) -> list[Config]:
    out = []
    for w in range(1, max_workers + 1):
        out.append(Config("slipway", "slipway", w))
        for pw in sorted({0, 1, w}):  # 1 is MLServer's default
            out.append(Config(f"mlserver-pw{pw}", "mlserver", w, {"parallel_workers": pw}))
    return out


class Server:
    def __init__(self, cfg: Config, kind: str, models: Path, workdir: Path) -> None:
        self.cfg, self.kind = cfg, kind
        self.port = free_port()
        self.log = workdir / f"{cfg.name}-w{cfg.workers}-{kind}.log"
        if cfg.server == "slipway":
            cmd = [
                str(RUNTIMES_PY.parent / OUR_SERVER[kind]),
                f"--model_dir={models / kind}",
                f"--model_name={MODEL}",
                f"--http_port={self.port}",
                f"--grpc_port={free_port()}",
                f"--workers={cfg.workers}",
            ]
        else:
            root = workdir / f"mlserver-{cfg.name}-w{cfg.workers}-{kind}"
            root.mkdir(parents=True, exist_ok=True)
            impl, filename = MLSERVER_IMPL[kind]
            (root / filename).write_bytes((models / kind / filename).read_bytes())
            model_settings = {"name": MODEL, "implementation": impl,
                              "parameters": {"uri": f"./{filename}"}}  # fmt: skip
            (root / "model-settings.json").write_text(json.dumps(model_settings))
            settings = {"http_port": self.port, "grpc_port": free_port(),
                        "metrics_port": free_port(), "debug": False, **cfg.settings}  # fmt: skip
            (root / "settings.json").write_text(json.dumps(settings))
            cmd = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)]
        self.cmd = ["taskset", "-c", cfg.cores(), *cmd]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # One OpenMP/BLAS thread per process for both servers: XGBoost's default of one per
        # core makes N workers x N threads spin against each other (ours passes --nthread 1 to
        # XGBoost by default anyway; MLServer has no such setting).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with self.log.open("wb") as log:
            # Own process group: MLServer's and our worker processes are stopped with it.
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cfg.name} exited: {self.log.read_text()[-3000:]}")
            try:
                url = f"{self.url}/v2/models/{MODEL}/ready"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)  # poll interval, bounded by the deadline
        self.stop()
        raise TimeoutError(f"{self.cfg.name} not ready in {START_TIMEOUT}s: {self.log}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the load client (run in its own pinned process) --------------------------------------


def _bodies(batch: int, n: int = 32) -> list[bytes]:
    from slipway.devcluster.load import make_payloads

    out = []
    for rows in make_payloads(n_features=FEATURES, n=n, rows_per_payload=batch):
        flat = [v for row in rows for v in row]
        tensor = {"name": "input-0", "shape": [batch, FEATURES], "datatype": "FP32", "data": flat}
        out.append(json.dumps({"inputs": [tensor]}).encode())
    return out


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 2)


async def closed_loop(url: str, batch: int, concurrency: int, duration: float,
                      warmup: float) -> dict[str, Any]:  # fmt: skip
    import aiohttp

    bodies = _bodies(batch)
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        measure_from, end = start + warmup, start + warmup + duration

        async def worker(i: int) -> None:
            nonlocal errors
            n = i
            while (now := time.monotonic()) < end:
                async with session.post(url, data=bodies[n % len(bodies)],
                                        headers=headers) as resp:  # fmt: skip
                    await resp.read()
                    ok = resp.status == 200
                done = time.monotonic()
                if now >= measure_from and done <= end:
                    if ok:
                        latencies.append((done - now) * 1000)
                    else:
                        errors += 1
                n += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.sort()
    return {"rps": round(len(latencies) / duration, 1), "ok": len(latencies), "errors": errors,
            "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99)}  # fmt: skip


async def fixed_rate(url_base: str, batch: int, rate: float, duration: float) -> dict[str, Any]:
    from slipway.devcluster.load import make_payloads, run_load

    payloads = make_payloads(n_features=FEATURES, n=32, rows_per_payload=batch)
    rep = await run_load(url_base, "localhost", MODEL, rate=rate, duration=duration,
                         protocol="v2", payloads=payloads, concurrency=64,
                         timeout=10.0)  # fmt: skip
    return {"rate": rate, "achieved_rps": round(rep.achieved_rate, 1), "ok": rep.ok,
            "errors": rep.failed, "p50_ms": rep.p50_ms and round(rep.p50_ms, 2),
            "p99_ms": rep.p99_ms and round(rep.p99_ms, 2)}  # fmt: skip


def client_main(spec: dict[str, Any]) -> None:
    if spec["mode"] == "closed":
        coro = closed_loop(spec["url"] + f"/v2/models/{MODEL}/infer", spec["batch"],
                           spec["concurrency"], spec["duration"], spec["warmup"])  # fmt: skip
    else:
        coro = fixed_rate(spec["url"], spec["batch"], spec["rate"], spec["duration"])
    print(json.dumps(asyncio.run(coro)))


def run_client(cores: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = ["taskset", "-c", cores, sys.executable, "-m", "bench.mlserver", "--client",
           json.dumps(spec)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO,
                         timeout=spec["duration"] + 120)  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- the benchmark ----------------------------------------------------------------------------


def points() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"mode": "closed", "batch": b, "concurrency": c} for b, c in CLOSED_POINTS
    ]
    out += [{"mode": "rate", "batch": b, "rate": r} for b, r in FIXED_RATES.items()]
    return out


def point_key(p: dict[str, Any]) -> str:
    if p["mode"] == "closed":
        return f"closed b{p['batch']} c{p['concurrency']}"
    return f"rate b{p['batch']} {p['rate']:g}/s"


def measure(cfg: Config, kind: str, models: Path, workdir: Path, duration: float,
            warmup: float) -> dict[str, Any]:  # fmt: skip
    results: dict[str, Any] = {}
    with serving(Server(cfg, kind, models, workdir)) as server:
        for p in points():
            spec = {**p, "url": server.url, "duration": duration, "warmup": warmup}
            results[point_key(p)] = run_client(cfg.client_cores(), spec)
    return results


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 2) if vals else None


def summarise(raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians over rounds per 'config|workers|model|point'."""
    out = {}
    for key, runs in raw.items():
        out[key] = {k: median_of(runs, k) for k in ("rps", "p50_ms", "p99_ms", "achieved_rps")}
        out[key]["errors"] = sum(r.get("errors", 0) for r in runs)
        out[key]["rounds"] = len(runs)
        for k in ("rps", "p99_ms"):  # per round, to show the spread
            out[key][f"{k}_by_round"] = [r.get(k) for r in runs]
    return out


def compare(summary: dict[str, dict[str, Any]], cfgs: list[Config],
            kinds: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for kind in kinds:
        for w in sorted({c.workers for c in cfgs}):
            theirs = [c for c in cfgs if c.server == "mlserver" and c.workers == w]
            for p in points():
                pk = point_key(p)
                ours = summary[f"slipway|{w}|{kind}|{pk}"]
                cands = [(c.name, summary[f"{c.name}|{w}|{kind}|{pk}"]) for c in theirs]
                if p["mode"] == "closed":  # best = most throughput
                    best_name, best = max(cands, key=lambda nc: nc[1]["rps"] or 0)
                    ratio = (ours["rps"] / best["rps"]) if best["rps"] else None
                else:  # best = lowest p99 at the same offered rate
                    best_name, best = min(cands, key=lambda nc: nc[1]["p99_ms"] or math.inf)
                    ratio = None
                rows.append({
                    "model": kind, "workers": w, "point": pk, "ours": ours,
                    "mlserver_best": best_name, "mlserver": best,
                    "mlserver_all": dict(cands),
                    "throughput_ratio": round(ratio, 2) if ratio else None,
                })  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    head = ("model", "workers", "load", "ours rps", "MLServer rps", "ratio", "ours p50/p99 ms",
            "MLServer p50/p99 ms", "MLServer best")  # fmt: skip
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        o, m = r["ours"], r["mlserver"]
        o_rps = o["rps"] if o["rps"] is not None else o["achieved_rps"]
        m_rps = m["rps"] if m["rps"] is not None else m["achieved_rps"]
        lines.append(" | ".join((
            r["model"], str(r["workers"]), r["point"], f(o_rps), f(m_rps),
            f(r["throughput_ratio"]), f"{f(o['p50_ms'])} / {f(o['p99_ms'])}",
            f"{f(m['p50_ms'])} / {f(m['p99_ms'])}", r["mlserver_best"],
        )))  # fmt: skip
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "loadavg": os.getloadavg()}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", help=argparse.SUPPRESS)  # internal: run one load point
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per point")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--models", default="sklearn,xgboost")
    ap.add_argument("--max-workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return 0

    kinds = [k for k in args.models.split(",") if k]
    ensure_runtimes_venv()
    ensure_mlserver_venv()
    cfgs = configs(args.max_workers)
    results: dict[str, Any] = {
        "settings": {
            "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
            "closed_loop_points": [{"batch": b, "concurrency": c} for b, c in CLOSED_POINTS],
            "fixed_rates": {str(b): r for b, r in FIXED_RATES.items()},
            "features": FEATURES, "protocol": "V2 REST, JSON, FP32 inputs, loopback",
            "pinning": "1 worker: server core 0, client core 1; 2 workers: all on cores 0-1",
            "configs": [{"name": c.name, "workers": c.workers, **c.settings} for c in cfgs],
            "mlserver_settings": "debug=false (no access log); parallel_workers as named",
            "environment": "OMP_NUM_THREADS=1 for both servers",
        },
        "versions": {
            "slipway": _versions(RUNTIMES_PY, ["slipway-runtimes", "kserve", "uvicorn",
                                               "uvloop", "orjson", "scikit-learn",
                                               "xgboost-cpu", "numpy"]),
            "mlserver": _versions(MLSERVER_VENV / "bin" / "python",
                                  ["mlserver", "mlserver-sklearn", "mlserver-xgboost",
                                   "uvicorn", "uvloop", "orjson", "scikit-learn", "xgboost",
                                   "numpy"]),
        },
        "machine_start": machine(),
    }  # fmt: skip
    raw: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        work = Path(tmp)
        train_models(work / "models")
        for rnd in range(args.rounds):
            for kind in kinds:
                order = cfgs[rnd % len(cfgs) :] + cfgs[: rnd % len(cfgs)]  # rotate each round
                for cfg in order:
                    t0 = time.monotonic()
                    got = measure(cfg, kind, work / "models", work, args.duration, args.warmup)
                    for pk, res in got.items():
                        raw.setdefault(f"{cfg.name}|{cfg.workers}|{kind}|{pk}", []).append(res)
                    print(f"round {rnd + 1} {kind} {cfg.name} w{cfg.workers}: "
                          f"{time.monotonic() - t0:.0f}s {json.dumps(got)}",
                          file=sys.stderr)  # fmt: skip
    summary = summarise(raw)
    rows = compare(summary, cfgs, kinds)
    results.update({"machine_end": machine(), "rows": rows})
    report(results, args.out)
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
