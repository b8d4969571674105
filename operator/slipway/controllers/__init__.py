"""Kopf handlers, one module per resource. Importing this package registers them."""

from slipway.controllers import canary, modeldeployment, resync, trainingjob

__all__ = ["canary", "modeldeployment", "resync", "trainingjob"]
