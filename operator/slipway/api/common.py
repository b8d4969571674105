"""Parts shared by every Slipway resource: the base model, conditions,
resource amounts and the CRD description each resource module exports."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "slipway.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "slipway"
MANAGED_BY = {"app.kubernetes.io/managed-by": "slipway"}


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, snake_case in Python.

    Unknown fields are ignored on parse: the apiserver has already validated the
    object against the CRD, and a newer CRD must not crash an older operator.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        """The camelCase dict as it appears on the apiserver, without unset Nones."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(description="Type of condition, e.g. Ready, Running, Succeeded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="A CamelCase machine-readable reason.")
    message: str = Field("", description="A human-readable explanation.")
    last_transition_time: str | None = Field(
        None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, description="The .metadata.generation this condition was computed from."
    )


# Kubernetes quantities as Slipway accepts them (a subset of resource.Quantity's grammar).
CPU_PATTERN = r"^[0-9]+(\.[0-9]+)?m?$"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
QUANTITY_MAX_LENGTH = 64
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1), "m": Decimal("0.001"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _quantity_string(value: Any) -> Any:
    """Kubernetes accepts a quantity written as a number (`cpu: 4`, `memory: 1073741824`):
    keep it as the string the builders pass on."""
    if isinstance(value, bool):
        raise ValueError("a quantity must be a string or a number, not a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Not from the apiserver (the schema is int-or-string), but from Python callers.
        return format(Decimal(repr(value)).normalize(), "f")
    return value


def _quantity_schema(pattern: str) -> dict[str, Any]:
    # int-or-string, like resource.Quantity in Kubernetes' own schemas: the pattern applies to
    # strings, `minimum` to numbers.
    return {"x-kubernetes-int-or-string": True, "pattern": pattern, "minimum": 0,
            "maxLength": QUANTITY_MAX_LENGTH}


CpuQuantity = Annotated[
    str, BeforeValidator(_quantity_string),
    Field(pattern=CPU_PATTERN, max_length=QUANTITY_MAX_LENGTH,
          json_schema_extra=_quantity_schema(CPU_PATTERN)),
]
"""A CPU amount: '500m', '2', '1.5', or a whole number such as 4."""

MemoryQuantity = Annotated[
    str, BeforeValidator(_quantity_string),
    Field(pattern=MEMORY_PATTERN, max_length=QUANTITY_MAX_LENGTH,
          json_schema_extra=_quantity_schema(MEMORY_PATTERN)),
]
"""A memory amount: '16Gi', '512M', or a number of bytes such as 1073741824."""


def parse_quantity(value: str) -> Decimal:
    """The value of a quantity matching CPU_PATTERN or MEMORY_PATTERN (cores or bytes)."""
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a quantity")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]


class ComputeResources(ApiModel):
    """CPU and memory for one container, as Kubernetes quantities (strings, or plain numbers
    as Kubernetes accepts them: cpu: 4, memory: 1073741824)."""

    cpu: CpuQuantity | None = Field(
        None, description="CPU request and limit, e.g. '4', 4 or '500m'.")
    memory: MemoryQuantity | None = Field(
        None, description="Memory request and limit, e.g. '16Gi' or a number of bytes.")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return *conditions* with *type_* set. lastTransitionTime moves only when the
    status flips, as the Kubernetes API conventions ask."""
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in conditions]
    for cond in out:
        if cond.get("type") == type_:
            if cond.get("status") != status_str:
                cond["lastTransitionTime"] = now or now_rfc3339()
            cond.update(status=status_str, reason=reason, message=message)
            if generation is not None:
                cond["observedGeneration"] = generation
            return out
    new: dict[str, Any] = {"type": type_, "status": status_str, "reason": reason,
                           "message": message, "lastTransitionTime": now or now_rfc3339()}
    if generation is not None:
        new["observedGeneration"] = generation
    out.append(new)
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class CRDInfo:
    """Everything crdgen needs to write one CustomResourceDefinition."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[ApiModel]
    status_model: type[ApiModel]
    description: str
    printer_columns: tuple[PrinterColumn, ...] = ()
    # CEL rules on the whole object (they may compare spec with oldSelf or status).
    root_validations: tuple[dict[str, str], ...] = field(default_factory=tuple)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"
