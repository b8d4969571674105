"""Deterministic merge of a user's partial PodSpec into the generated one.

Maps merge recursively; lists whose items all carry a `name` (containers,
volumes, env, volumeMounts, ports) merge item by item on that name, keeping the
generated order and appending new names; any other value from the override
replaces the base. The same inputs always give the same output.
"""

from __future__ import annotations

import copy
from typing import Any


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list) and _named(base) and _named(override):
        out_list = [copy.deepcopy(i) for i in base]
        index = {item["name"]: pos for pos, item in enumerate(out_list)}
        for item in override:
            if item["name"] in index:
                out_list[index[item["name"]]] = merge(out_list[index[item["name"]]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(override)
