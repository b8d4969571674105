"""Slipway model servers built on the KServe Python SDK."""

__version__ = "0.1.0"
