"""Slipway: a Kubernetes-native ML platform operator."""

__version__ = "0.1.0"
