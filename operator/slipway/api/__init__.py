"""The API models: the single source of truth for the CRDs in crds/."""

from slipway.api import canary, modeldeployment, trainingjob
from slipway.api.common import CRDInfo

ALL_CRDS: tuple[CRDInfo, ...] = (trainingjob.CRD, modeldeployment.CRD, canary.CRD)
