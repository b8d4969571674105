"""Canary rollouts: the state machine (machine), the analysis of one interval (analysis), the
PromQL it runs (queries), prediction drift (psi) and the Prometheus client (prometheus).

Everything but prometheus.PrometheusClient is pure: the Canary controller feeds events in and
executes the actions that come out.
"""
