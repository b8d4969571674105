"""The `slipway` command: run the operator, generate CRDs, drive the dev cluster."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from slipway import __version__

# The checked-in CRDs, and the copy Helm installs from the chart.
DEFAULT_CRD_DIRS = ("crds", "charts/slipway/crds")
# The manual actions of `slipway canary VERB NAME` (slipway.api.canary.ACTIONS, kept here so
# that building the parser imports no models).
CANARY_VERBS = {
    "promote": "go to the next step now, without waiting for the analysis",
    "promote-full": "skip the remaining steps and the analysis: promote the canary now",
    "pause": "hold the rollout at its current weight",
    "resume": "go on with a paused rollout",
    "abort": "end the rollout: the stable version takes all traffic back",
    "retry": "start a rolled-back, aborted or failed rollout of the same version again",
}
DEFAULT_DEV_DIR = Path(os.environ.get("SLIPWAY_DEV_DIR",
                                      Path.home() / ".cache" / "slipway" / "dev"))


def _cmd_run(args: argparse.Namespace) -> int:
    from slipway import memory

    memory.use_system_malloc()  # starts again with PYTHONMALLOC=malloc unless it is set
    # The operator talks to the API server through slipway.kube alone. Kopf imports the
    # official client whenever it is installed (to accept its models, to log in through it):
    # 8 MiB of RSS that the operator never uses. Keep it out, as the image does.
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    from slipway.config import SETTINGS
    from slipway.runner import run

    settings = SETTINGS.model_copy(update={
        k: v for k, v in {
            "namespace": args.namespace, "leader_election": args.leader_election or None,
            "json_logs": args.json_logs or None, "liveness_port": args.liveness_port,
            "metrics_port": args.metrics_port,
        }.items() if v is not None
    })
    run(settings)
    return 0


def _cmd_crds(args: argparse.Namespace) -> int:
    from slipway.crdgen import write_all

    changed = [path for out in args.out or DEFAULT_CRD_DIRS
               for path in write_all(Path(out), check=args.check)]
    if args.check and changed:
        print("out of date (run `slipway crds`): " + ", ".join(map(str, changed)), file=sys.stderr)
        return 1
    for path in changed:
        print(f"wrote {path}")
    return 0


def _cmd_dev_up(args: argparse.Namespace) -> int:
    from slipway.devcluster import Cluster

    cluster = Cluster(Path(args.dir), gpu_nodes=args.gpu_nodes, cpu_nodes=args.cpu_nodes,
                      gpus_per_node=args.gpus_per_node, install_crds=not args.no_crds,
                      serving=not args.no_serving, kserve_gateway_api=args.kserve_gateway_api,
                      kueue=args.kueue, training_operator=args.training_operator,
                      training_operator_threads=args.training_operator_threads,
                      training_operator_qps=args.training_operator_qps)
    cluster.start()
    print(json.dumps({"timings_s": cluster.timings, "rss_mib": cluster.rss_mib(),
                      "endpoints": cluster.endpoints}), file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"export PATH={cluster.bin}:$PATH")
    return 0


def _cmd_dev_down(args: argparse.Namespace) -> int:
    from slipway.devcluster.cluster import stop_from_state

    stopped = stop_from_state(Path(args.dir))
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _cmd_dev_load(args: argparse.Namespace) -> int:
    """Send a bounded request stream through the local gateway to one InferenceService."""
    import asyncio
    import subprocess
    from urllib.parse import urlsplit

    from slipway.devcluster.cluster import read_state
    from slipway.devcluster.load import make_payloads, run_load

    state = read_state(Path(args.dir))
    if "gateway" not in state.endpoints:
        print("error: the local cluster runs no gateway (started with --no-serving?)",
              file=sys.stderr)
        return 1
    kubectl = str(Path(state.bin) / "kubectl")
    proc = subprocess.run([kubectl, "--kubeconfig", state.kubeconfig, "get", "inferenceservice",
                           args.name, "-n", args.namespace, "-o", "jsonpath={.status.url}"],
                          capture_output=True, text=True, check=False)
    host = urlsplit(proc.stdout.strip()).hostname if proc.returncode == 0 else None
    if not host:
        print(f"error: InferenceService {args.namespace}/{args.name} has no status.url yet "
              f"{proc.stderr.strip()}", file=sys.stderr)
        return 1
    report = asyncio.run(run_load(
        state.endpoints["gateway"], host, args.model or args.name, rate=args.rate,
        duration=args.duration, protocol=args.protocol,
        payloads=make_payloads(n_features=args.features)))
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_dev_demo(args: argparse.Namespace) -> int:
    from slipway.devcluster.demo import run_demo

    return run_demo(Path(args.dir), keep=args.keep)


def _cmd_canary_action(args: argparse.Namespace) -> int:
    from slipway.canary.commands import act

    return act(args.name, args.namespace, args.canary_command, args.kubeconfig)


def _cmd_canary_status(args: argparse.Namespace) -> int:
    from slipway.canary.commands import status

    return status(args.name, args.namespace, args.kubeconfig)


def _add_canary(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("name", help="the Canary")
    target.add_argument("-n", "--namespace",
                        help="its namespace (default: the kubeconfig context's, else default)")
    target.add_argument("--kubeconfig", help="default: $KUBECONFIG, else ~/.kube/config")

    canary = sub.add_parser("canary", help="act on a Canary rollout, or show one")
    verbs = canary.add_subparsers(dest="canary_command", required=True, metavar="VERB")
    for verb, text in CANARY_VERBS.items():
        verbs.add_parser(verb, parents=[target], help=text, description=text
                         ).set_defaults(func=_cmd_canary_action)
    text = "the rollout: phase, versions, schedule, last analysis, history and Events"
    verbs.add_parser("status", parents=[target], help=text, description=text
                     ).set_defaults(func=_cmd_canary_status)


def _cmd_version(_: argparse.Namespace) -> int:
    print(__version__)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slipway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (Kopf)")
    run.add_argument("--namespace", help="watch only this namespace (default: all)")
    run.add_argument("--leader-election", action="store_true",
                     help="hold a Lease to reconcile; wait as standby while another replica "
                          "holds it (for more than one replica)")
    run.add_argument("--json-logs", action="store_true", help="log as JSON lines")
    run.add_argument("--liveness-port", type=int, help="port of /healthz (default 8080)")
    run.add_argument("--metrics-port", type=int, help="port of /metrics (0 disables)")
    run.set_defaults(func=_cmd_run)

    crds = sub.add_parser("crds", help="generate crds/ from the API models")
    crds.add_argument("--out", action="append",
                      help="output directory, repeatable (default: crds/ and the chart's crds/)")
    crds.add_argument("--check", action="store_true", help="fail if crds/ is out of date")
    crds.set_defaults(func=_cmd_crds)

    dev = sub.add_parser("dev", help="the local control plane")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="build (if needed) and start a local cluster")
    up.add_argument("--dir", default=str(DEFAULT_DEV_DIR))
    up.add_argument("--gpu-nodes", type=int, default=4)
    up.add_argument("--cpu-nodes", type=int, default=2)
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--no-crds", action="store_true", help="skip installing CRDs")
    up.add_argument("--no-serving", action="store_true",
                    help="leave out KServe's controller, Prometheus, the pod runner and the "
                         "local gateway")
    up.add_argument("--kserve-gateway-api", action="store_true",
                    help="KServe routes through Gateway API HTTPRoutes instead of Ingresses")
    up.add_argument("--kueue", action="store_true",
                    help="also build (first time: ~2 min) and run Kueue (batch/v1 Jobs; "
                         "PyTorchJobs too with --training-operator)")
    up.add_argument("--training-operator", action="store_true",
                    help="also build (first time: ~2 min) and run Kubeflow's training-operator "
                         "(PyTorchJob)")
    up.add_argument("--training-operator-threads", type=int, default=1,
                    help="its --controller-threads (default 1, as upstream)")
    up.add_argument("--training-operator-qps", type=int, default=20,
                    help="its --kube-api-qps; the burst is 1.5x (default 20, as upstream)")
    up.set_defaults(func=_cmd_dev_up)
    down = dev_sub.add_parser("down", help="stop the local cluster")
    down.add_argument("--dir", default=str(DEFAULT_DEV_DIR))
    down.set_defaults(func=_cmd_dev_down)
    load = dev_sub.add_parser("load", help="steady, bounded traffic to an InferenceService "
                                           "through the local gateway")
    load.add_argument("name", help="the InferenceService (= ModelDeployment) name")
    load.add_argument("-n", "--namespace", default="default")
    load.add_argument("--model", help="model name in the URL path (default: NAME)")
    load.add_argument("--rate", type=float, default=20.0, help="requests per second")
    load.add_argument("--duration", type=float, default=30.0, help="seconds (bounded)")
    load.add_argument("--protocol", choices=("v1", "v2"), default="v2")
    load.add_argument("--features", type=int, default=4, help="features per input row")
    load.add_argument("--dir", default=str(DEFAULT_DEV_DIR))
    load.set_defaults(func=_cmd_dev_load)
    demo = dev_sub.add_parser("demo", help="cluster + operator + samples, end to end")
    demo.add_argument("--dir", default=str(DEFAULT_DEV_DIR))
    demo.add_argument("--keep", action="store_true", help="leave the cluster running")
    demo.set_defaults(func=_cmd_dev_demo)

    _add_canary(sub)

    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=_cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
