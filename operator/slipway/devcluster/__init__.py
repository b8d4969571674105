"""A real local control plane (etcd, kube-apiserver, controller-manager,
scheduler, kwok) on loopback, for the demo, the tests and the benchmarks."""

from slipway.devcluster.cluster import Cluster, ClusterError

__all__ = ["Cluster", "ClusterError"]
