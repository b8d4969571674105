"""PLACEHOLDER: the ModelDeployment helper replaces this module."""

from slipway.api.common import ApiModel, CRDInfo


class ModelDeploymentSpec(ApiModel):
    pass


class ModelDeploymentStatus(ApiModel):
    pass


CRD = CRDInfo(kind="ModelDeployment", plural="modeldeployments", short_names=("md",),
              spec_model=ModelDeploymentSpec, status_model=ModelDeploymentStatus,
              description="placeholder")
