"""Kopf handlers, one module per resource. Importing this package registers them."""

from slipway.controllers import modeldeployment, resync, trainingjob

__all__ = ["modeldeployment", "resync", "trainingjob"]
