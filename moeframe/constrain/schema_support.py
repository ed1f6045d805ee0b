"""Which JSON Schema keywords each backend enforces while decoding; the rest are refused by name.

Run on a schema's normal form (:mod:`moeframe.constrain.schema_normal`), so
annotations are gone and mergeable combinators are merged. A keyword left
that the backend would drop raises :class:`UnsupportedKeywordError`; none is
ignored. The sets are what tests/constrain/test_constrain_keywords.py
checks each backend enforces (valid instances accepted, invalid rejected).
``format`` is enforced for the formats a backend knows and is otherwise an
annotation, as JSON Schema 2020-12 (section 7.2.1) makes it by default.
"""

from __future__ import annotations

from typing import Any

from moeframe.constrain.errors import UnsupportedKeywordError
from moeframe.constrain.schema_normal import DEFINITIONS, iter_nodes

COMMON = {"type", "enum", "const", "properties", "required", "additionalProperties", "items",
          "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
          "exclusiveMinimum", "exclusiveMaximum", "anyOf", "$ref"} | set(DEFINITIONS)
ENFORCED = {
    "xgrammar": COMMON | {"prefixItems", "minProperties", "maxProperties", "propertyNames", "multipleOf"},
    "fsm": COMMON,
}
WHY = {
    "oneOf": "its branches are not provably disjoint, so exactly-one cannot be enforced",
    "allOf": "its parts do not merge into one schema",
    "uniqueItems": "uniqueness is not expressible in a grammar",
    "not": "complements are not expressible in a grammar",
    "if": "conditional schemas are not expressible here",
    "contains": "containment is not expressible here",
}


def check_supported(schema: Any, backend: str) -> None:
    """Raise :class:`UnsupportedKeywordError` for the first keyword ``backend`` cannot enforce."""
    enforced = ENFORCED[backend]
    for node in iter_nodes(schema):
        for key in node:
            if key not in enforced:
                raise UnsupportedKeywordError(key, backend, WHY.get(key, ""))
        if "anyOf" in node and set(node) - {"anyOf"} - set(DEFINITIONS):
            other = sorted(set(node) - {"anyOf"} - set(DEFINITIONS))[0]
            raise UnsupportedKeywordError("anyOf", backend, f"beside '{other}', which does not merge into its branches")
        if "pattern" in node and ("minLength" in node or "maxLength" in node):
            length = "minLength" if "minLength" in node else "maxLength"
            raise UnsupportedKeywordError(length, backend, "beside 'pattern'")
        if "pattern" in node and "format" in node:
            raise UnsupportedKeywordError("format", backend, "beside 'pattern'")
        if "multipleOf" in node and not (node.get("type") == "integer" and isinstance(node["multipleOf"], int)):
            raise UnsupportedKeywordError("multipleOf", backend, "only an integer multipleOf of type integer is enforced")
