"""Kopf handlers, one module per resource. Importing this package registers them."""

from slipway.controllers import modeldeployment, trainingjob

__all__ = ["modeldeployment", "trainingjob"]
