"""Deterministic merge of a user's partial PodSpec into the generated one.

Maps merge recursively; lists whose items all carry a `name` (containers,
volumes, env, volumeMounts, ports) merge item by item on that name, keeping the
generated order and appending new names; any other value from the override
replaces the base. The same inputs always give the same output.

An env var or a volume of the same name is replaced whole, not merged: its value and its
source are alternatives (`value` vs `valueFrom`, `emptyDir` vs `persistentVolumeClaim`), and
merging two of them gives an item the Job API rejects.
"""

from __future__ import annotations

import copy
from typing import Any


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


# Lists whose same-named items are replaced, not merged (see the module docstring).
REPLACED_BY_NAME = frozenset({"env", "volumes"})


def merge(base: Any, override: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for name, value in override.items():
            out[name] = merge(out[name], value, name) if name in out else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list) and _named(base) and _named(override):
        out_list = [copy.deepcopy(i) for i in base]
        index = {item["name"]: pos for pos, item in enumerate(out_list)}
        for item in override:
            if item["name"] in index:
                pos = index[item["name"]]
                out_list[pos] = copy.deepcopy(item) if key in REPLACED_BY_NAME \
                    else merge(out_list[pos], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(override)
