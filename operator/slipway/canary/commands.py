"""`slipway canary`: act on a rollout and show one, from a person's terminal.

`slipway canary VERB NAME` sets the action annotation (api.canary.ACTION_ANNOTATION) with a
JSON merge patch; the Canary controller consumes it, records status.lastAction and removes it.
`slipway canary status NAME` prints the rollout: phase, versions, schedule, the last analysis,
the history and a timeline of the Canary's Events.

The formatting functions are pure: they take the Canary and its Events as plain dicts, as the
apiserver returns them, and return text. Only act() and status() talk to the apiserver, with
slipway.kube, synchronously.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from slipway.api.canary import ACTION_ANNOTATION, ACTIONS, CRD, CanarySpec
from slipway.api.common import GROUP, VERSION
from slipway.status.trainingjob import format_duration

Obj = Mapping[str, Any]
NONE = "-"


# --- the actions -------------------------------------------------------------------------


def action_patch(action: str) -> dict[str, Any]:
    """The merge patch that asks the controller for *action*."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    return {"metadata": {"annotations": {ACTION_ANNOTATION: action}}}


def describe_action(canary: Obj, action: str) -> str:
    """What `slipway canary ACTION` did, given the Canary the patch returned."""
    meta, status = canary.get("metadata") or {}, canary.get("status") or {}
    where = f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"
    now = f"phase {status.get('phase') or 'Idle'}"
    if status.get("canaryVersion"):
        now += f", canary {status['canaryVersion']} at {status.get('canaryWeight') or 0}%"
    return (f"canary {where}: requested {action} ({ACTION_ANNOTATION}={action}); now {now}.\n"
            f"The operator acts on it at its next reconcile: see `slipway canary status "
            f"{meta.get('name', 'NAME')} -n {meta.get('namespace', 'default')}`.")


# --- formatting helpers ------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> str:
    """Left-aligned columns, two spaces apart, like kubectl get."""
    cells = [list(headers), *([" ".join(str(c).split()) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     .rstrip() for row in cells)


def number(value: float | None, signed: bool = False) -> str:
    """A measured value, to four significant digits."""
    if value is None:
        return NONE
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def when(timestamp: str | None) -> str:
    """An RFC 3339 timestamp as `YYYY-MM-DD HH:MM:SS` in UTC."""
    parsed = _parse_time(timestamp)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") if parsed else NONE


def _parse_time(timestamp: str | None) -> dt.datetime | None:
    if not timestamp:
        return None
    try:
        parsed = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


# --- the overview ------------------------------------------------------------------------


def schedule(spec: Obj) -> list[int] | None:
    """The canary weight of each step (CanarySpec.weights), or None for a spec the models
    do not accept (e.g. one written before a rule was tightened)."""
    try:
        return CanarySpec.model_validate(spec).weights()
    except ValidationError:
        return None


def format_schedule(weights: Sequence[int], step: int | None) -> str:
    """`10% -> [25%] -> 50%`, the current step in brackets."""
    return " -> ".join(f"[{w}%]" if i == step else f"{w}%" for i, w in enumerate(weights))


def format_model(version: str | None, model: Obj | None) -> str:
    """A version with where its model lives and comes from."""
    if not version:
        return "none"
    if not model:
        return version
    return f"{version}  {model.get('uri', NONE)}  (from {model.get('source', NONE)})"


def format_overview(canary: Obj) -> str:
    meta, spec = canary.get("metadata") or {}, canary.get("spec") or {}
    status = canary.get("status") or {}
    weights = schedule(spec) or []
    step = status.get("step")
    target = (spec.get("targetRef") or {}).get("name", NONE)
    threshold = (spec.get("analysis") or {}).get("threshold", 3)
    fields: list[tuple[str, str]] = [
        ("Name", f"{meta.get('namespace', 'default')}/{meta.get('name', NONE)} "
                 f"(rolls out ModelDeployment {target})"),
        ("Phase", status.get("phase") or "Unknown (not reconciled yet)"),
        ("Message", status.get("message") or NONE),
        ("Stable", format_model(status.get("stableVersion"), status.get("stableModel"))),
        ("Canary", format_model(status.get("canaryVersion"), status.get("canaryModel"))),
        ("Weight", f"{status.get('canaryWeight') or 0}% of traffic on the canary"),
        ("Step", f"{step + 1} of {len(weights)}" if step is not None and weights else NONE),
        ("Schedule", f"{format_schedule(weights, step)}, {spec.get('interval', '1m')} each"
         if weights else "invalid spec"),
        ("Failed checks", f"{status.get('failedChecks') or 0}/{threshold} "
                          f"(rolls back at {threshold})"),
    ]
    if status.get("consecutiveErrors"):
        limit = (spec.get("analysis") or {}).get("consecutiveErrorLimit", 4)
        fields.append(("Query errors", f"{status['consecutiveErrors']}/{limit} in a row"))
    if spec.get("paused"):
        fields.append(("Held", "spec.paused is true"))
    if status.get("lastAction"):
        fields.append(("Last action", status["lastAction"]))
    pending = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    if pending:
        fields.append(("Pending action", pending))
    width = max(len(label) for label, _ in fields) + 2
    return "\n".join(f"{label + ':':<{width}}{value}" for label, value in fields)


# --- the last analysis -------------------------------------------------------------------


def format_bounds(check: Obj | None) -> str:
    """A metric's bounds from the spec: `<= 1`, `>= 5` or `0.05..0.4`, relative or not."""
    if not check:
        return NONE
    low, high = check.get("min"), check.get("max")
    if low is not None and high is not None:
        text = f"{number(low)}..{number(high)}"
    elif high is not None:
        text = f"<= {number(high)}"
    elif low is not None:
        text = f">= {number(low)}"
    else:
        return NONE
    return f"{text} vs stable" if _relative(check) else text


def _relative(check: Obj | None) -> bool:
    """Whether the check bounds canary minus stable (prediction-drift always compares the
    two versions: its bounds are on the drift itself)."""
    return (check is not None and check.get("compare") == "RelativeToStable"
            and check.get("name") != "prediction-drift")


def format_analysis(canary: Obj) -> str:
    status = canary.get("status") or {}
    results = status.get("lastAnalysis") or []
    if not results:
        return "Last analysis: none yet"
    checks = {c.get("name"): c for c in
              ((canary.get("spec") or {}).get("analysis") or {}).get("metrics") or []}
    rows = [(r.get("name", NONE),
             number(r.get("value"), signed=_relative(checks.get(r.get("name")))),
             number(r.get("stableValue")),
             format_bounds(checks.get(r.get("name"))),
             NONE if r.get("samples") is None else str(r["samples"]),
             r.get("outcome", NONE),
             r.get("message") or "")
            for r in results]
    title = f"Last analysis ({when(status.get('lastAnalysisTime'))} UTC):"
    headers = ("METRIC", "VALUE", "STABLE", "BOUNDS", "SAMPLES", "OUTCOME", "MESSAGE")
    return f"{title}\n{table(headers, rows)}"


# --- the history and the timeline --------------------------------------------------------


def rollout_seconds(record: Obj) -> float | None:
    """durationSeconds, or finishedAt - startedAt."""
    if record.get("durationSeconds") is not None:
        return float(record["durationSeconds"])
    start, end = _parse_time(record.get("startedAt")), _parse_time(record.get("finishedAt"))
    return (end - start).total_seconds() if start and end else None


def _duration(seconds: float | None) -> str:
    return NONE if seconds is None else format_duration(seconds)


def format_history(canary: Obj) -> str:
    history = (canary.get("status") or {}).get("history") or []
    if not history:
        return "History: no finished rollouts"
    rows = [(r.get("version", NONE), r.get("outcome", NONE), when(r.get("finishedAt")),
             _duration(rollout_seconds(r)), r.get("source") or NONE, r.get("reason") or "")
            for r in history]
    headers = ("VERSION", "OUTCOME", "FINISHED (UTC)", "DURATION", "SOURCE", "REASON")
    return f"History (newest first):\n{table(headers, rows)}"


def event_time(event: Obj) -> str | None:
    """When an Event last happened: lastTimestamp, else eventTime, firstTimestamp or the
    creation time (the order kubectl uses)."""
    return (event.get("lastTimestamp") or event.get("eventTime")
            or event.get("firstTimestamp") or (event.get("metadata") or {}).get(
                "creationTimestamp"))


def canary_events(canary: Obj, events: Iterable[Obj]) -> list[Obj]:
    """The Events about *canary* (by kind and name, and uid when both have one), oldest
    first."""
    meta = canary.get("metadata") or {}
    mine = []
    for event in events:
        about = event.get("involvedObject") or {}
        if about.get("kind") != CRD.kind or about.get("name") != meta.get("name"):
            continue
        if about.get("uid") and meta.get("uid") and about["uid"] != meta["uid"]:
            continue  # about an earlier Canary of the same name
        mine.append(event)
    return sorted(mine, key=lambda e: _parse_time(event_time(e))
                  or dt.datetime.min.replace(tzinfo=dt.UTC))


def format_timeline(canary: Obj, events: Iterable[Obj]) -> str:
    mine = canary_events(canary, events)
    if not mine:
        return "Timeline: no events (Kubernetes keeps them for an hour by default)"
    rows = [(when(event_time(e)), e.get("reason") or NONE,
             (e.get("message") or "") + (f" (x{e['count']})" if (e.get("count") or 1) > 1
                                         else ""))
            for e in mine]
    return f"Timeline:\n{table(('TIME (UTC)', 'REASON', 'MESSAGE'), rows)}"


def format_status(canary: Obj, events: Iterable[Obj]) -> str:
    """Everything `slipway canary status` prints."""
    return "\n\n".join((format_overview(canary), format_analysis(canary),
                        format_history(canary), format_timeline(canary, events))) + "\n"


# --- the apiserver -----------------------------------------------------------------------


class CommandError(RuntimeError):
    """A failure to report in one line, without a traceback."""


def _connect(kubeconfig: str | None, namespace: str | None) -> str:
    """Connect slipway.kube to *kubeconfig* (default: in a pod its service account, else
    $KUBECONFIG or ~/.kube/config); *namespace*, else its context's, as kubectl uses it."""
    from slipway import credentials, kube

    try:
        _, creds = kube.connect(kubeconfig)
    except (credentials.CredentialsError, OSError, ValueError) as exc:
        raise CommandError(f"no usable kubeconfig: {exc}") from exc
    return namespace or creds.namespace or "default"


def _call(what: str, method: str, url: str, body: Any = None,
          content_type: str = "application/json",
          query: list[tuple[str, Any]] | None = None) -> dict[str, Any]:
    """One API call; its failures become CommandErrors that say what failed."""
    from slipway import kube

    try:
        result = kube.call(method, url, body, content_type, query)
    except kube.KubeError as exc:
        if exc.status == 0:
            raise CommandError(f"{what}: cannot reach the apiserver: {exc}") from exc
        if exc.status == 404:
            raise CommandError(f"{what}: not found") from exc
        raise CommandError(f"{what}: {exc}") from exc
    if result is None:
        raise CommandError(f"{what}: not found")
    return result


def act(name: str, namespace: str | None, action: str, kubeconfig: str | None = None) -> int:
    """`slipway canary ACTION NAME`: set the action annotation."""
    from slipway import kube

    try:
        namespace = _connect(kubeconfig, namespace)
        canary = _call(f"canary {namespace}/{name}", "PATCH",
                       kube.path(f"{GROUP}/{VERSION}", CRD.kind, namespace, name),
                       action_patch(action), "application/merge-patch+json")
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe_action(canary, action))
    return 0


def status(name: str, namespace: str | None, kubeconfig: str | None = None) -> int:
    """`slipway canary status NAME`: print the rollout and its timeline."""
    from slipway import kube

    try:
        namespace = _connect(kubeconfig, namespace)
        canary = _call(f"canary {namespace}/{name}", "GET",
                       kube.path(f"{GROUP}/{VERSION}", CRD.kind, namespace, name))
        events = _call(f"events of canary {namespace}/{name}", "GET",
                       kube.path("v1", "Event", namespace), query=[(
                           "fieldSelector",
                           f"involvedObject.kind={CRD.kind},involvedObject.name={name}")])
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_status(canary, events.get("items") or []), end="")
    return 0
