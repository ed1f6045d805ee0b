"""Rewrites that are exact where objects are written closed: only the properties a schema lists.

Both backends write objects that way by default (fsm always; xgrammar
unless ``open_objects``): an object with ``properties`` and no
``additionalProperties`` never gets a property it does not list. Each
rewrite marks the objects it relies on with ``additionalProperties: false``,
so they stay closed under ``open_objects`` too (a narrower language there).
Over the outputs a backend can write, these keywords then become enforceable:
``patternProperties`` (a pattern's schema merged into the listed properties
it names; with none listed, keys from ``propertyNames``), ``dependentRequired``
and ``dependentSchemas`` (absent, or present with the dependency), and
``oneOf`` of objects whose outputs fail each other's ``required``. Each
leaves anything it cannot rewrite for the keyword check to refuse.
"""

from __future__ import annotations

import json
import re
from typing import Any

from moeframe.constrain.schema_normal import (
    DEFINITIONS,
    add_required_entries,
    possible_types,
    disjoint,
    iter_nodes,
    merge,
)


def close_objects(schema: Any) -> Any:
    """All of this module's rewrites, in place on a normal-form schema."""
    return close_one_of(close_dependencies(close_pattern_properties(schema)))


def close_pattern_properties(schema: Any) -> Any:
    """``patternProperties`` made enforceable where objects are written closed (``open_objects`` false).

    A listed property whose name a pattern finds must also match that
    pattern's schema (merged into it); with no listed properties and one
    schema for all patterns, keys are written from the patterns
    (``propertyNames``) with that schema as their values. Unlisted keys are
    never written otherwise, so the result is exact or narrower. Anything
    else keeps ``patternProperties``, which the keyword check then refuses.
    """
    for node in iter_nodes(schema):
        patterns = node.get("patternProperties")
        if not isinstance(patterns, dict) or "propertyNames" in node or node.get("additionalProperties", False) is not False:
            continue
        properties = dict(node.get("properties", {}))
        try:
            for name in properties:
                for pattern, sub in patterns.items():
                    if re.search(pattern, name):
                        merged = merge(properties[name], sub)
                        if merged is None:
                            raise ValueError(name)
                        properties[name] = merged
        except (re.error, ValueError):
            continue
        if properties:
            node["properties"] = properties
            node["additionalProperties"] = False
            del node["patternProperties"]
        elif len({json.dumps(sub, sort_keys=True) for sub in patterns.values()}) == 1:
            node["propertyNames"] = {"pattern": "|".join(patterns)}
            node["additionalProperties"] = next(iter(patterns.values()))
            del node["patternProperties"]
    return schema


def close_one_of(schema: Any) -> Any:
    """``oneOf`` as ``anyOf`` where objects are written closed and no branch's output can match another.

    A closed object writes only its listed properties, so its output fails
    every branch that requires a property it does not list; branches that
    pairwise fail each other that way (or are disjoint anyway) are exclusive
    in every output, though not in every instance.
    """
    root = schema if isinstance(schema, dict) else {}
    for node in iter_nodes(schema):
        if not isinstance(node.get("oneOf"), list) or set(node) - {"oneOf"} - set(DEFINITIONS):
            continue
        branches = [_resolve(root, branch) for branch in node["oneOf"]]
        overlapping = [(i, j) for i in range(len(branches)) for j in range(i + 1, len(branches))
                       if not disjoint(branches[i], branches[j])]
        if all(_closed_excludes(branches[i], branches[j]) and _closed_excludes(branches[j], branches[i])
               for i, j in overlapping):
            for k in {k for pair in overlapping for k in pair}:
                branches[k]["additionalProperties"] = False
            node["anyOf"] = node.pop("oneOf")
    return schema


def _resolve(root: dict[str, Any], schema: Any, depth: int = 8) -> Any:
    """``schema`` with a top-level local ``$ref`` chain into definitions followed (at most ``depth`` links)."""
    while depth and isinstance(schema, dict) and set(schema) == {"$ref"} and isinstance(schema["$ref"], str):
        key, _, name = schema["$ref"].removeprefix("#/").partition("/")
        if key not in DEFINITIONS or name not in root.get(key, {}):
            break
        schema, depth = root[key][name], depth - 1
    return schema


def _closed_excludes(writer: Any, other: Any) -> bool:
    """Whether no output of the closed object ``writer`` has every property ``other`` requires."""
    if not (isinstance(writer, dict) and isinstance(other, dict)) or possible_types(writer) != {"object"}:
        return False
    if writer.get("additionalProperties", False) is not False or "patternProperties" in writer:
        return False
    return bool(set(other.get("required", [])) - set(writer.get("properties", {})))


def close_dependencies(schema: Any, max_dependencies: int = 3) -> Any:
    """``dependentRequired``/``dependentSchemas`` as an ``anyOf`` of "absent" and "present with its dependency".

    Exact only where objects are written closed (a property left out of
    ``properties`` is never written, and ``additionalProperties`` is absent or
    false), which is how both backends write them by default; 2^k branches
    for k dependencies, so at most ``max_dependencies``.
    """
    for node in iter_nodes(schema):
        deps = {**{n: ("required", d) for n, d in node.get("dependentRequired", {}).items()},
                **{n: ("schema", d) for n, d in node.get("dependentSchemas", {}).items()}}
        closed = node.get("additionalProperties", False) is False
        if not deps or len(deps) > max_dependencies or not closed or set(node) & {"anyOf", "oneOf", "allOf", "patternProperties"}:
            continue
        base = {k: v for k, v in node.items() if k not in ("dependentRequired", "dependentSchemas") and k not in DEFINITIONS}
        branches: list[Any] = [base]
        for name, (kind, dep) in deps.items():
            grown: list[Any] = []
            for branch in branches:
                if name not in branch.get("required", []):
                    grown.append({**branch, "properties": {k: v for k, v in branch.get("properties", {}).items() if k != name}})
                extra = {"required": [name] + list(dep)} if kind == "required" else merge({"required": [name]}, dep)
                present = merge(branch, extra) if extra not in (None, False) else extra
                if present is None:
                    break
                if present is not False:
                    add_required_entries(present)
                    grown.append(present)
            else:
                branches = grown
                continue
            break
        else:
            for key in ("dependentRequired", "dependentSchemas"):
                node.pop(key, None)
            for key in list(base):
                del node[key]
            node["anyOf"] = [{**branch, "additionalProperties": False} for branch in branches]
    return schema
