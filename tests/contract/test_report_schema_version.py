"""Every change of the report's fields comes with a new REPORT_SCHEMA_VERSION.

Users diff reports across versions and read them with older clients, so a field added,
removed, renamed, retyped or made optional is a contract change: it must bump
REPORT_SCHEMA_VERSION. The report's JSON schema is reduced to its fields (dotted path,
type, required or optional; descriptions, titles and defaults left out, so that
rewording a description is no change), and the fingerprint of that list must be the one
recorded for the current version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from api_schemas import REPORT_SCHEMA_VERSION, Report, SetReport

# REPORT_SCHEMA_VERSION -> fingerprint of the report's fields. A version gets an entry
# when it is introduced; an entry never changes afterwards.
FINGERPRINTS: dict[str, str] = {
    "1.0": "73e1a711a0cab51f98712071328854b3b040f11ab53d157f0c1465ac30758103",
    # 1.1: sets[].intrinsic_dimension.seed (and params.knn gains "auto"); sets[].
    # out_of_sample, neural_collapse, baselines, loo_error.*_ci95, regime_uncertain,
    # graph.nonunique_nodes; study; params.baselines
    "1.1": "051abff4ecf878f496c5bbf88a8a8b721c05d56d894515485cc0ff9601520d97",
    # 1.2: compare (a compare job's per-point overlap and CKA), drift (a drift job's
    # scores, KS test, verdict), comparison.overlap_consecutive
    "1.2": "92e2778ad123b149d5c323011ad05287247a47d7658e818713757b73b35b90fb",
}


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = definitions[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _type_of(node: dict[str, Any], definitions: dict[str, Any]) -> str:
    """A field's type, by structure: a model is ``object``, whatever its class's name."""
    node = _resolve(node, definitions)
    if "anyOf" in node:
        return "|".join(sorted(_type_of(member, definitions) for member in node["anyOf"]))
    if "enum" in node:
        return "enum[" + ",".join(sorted(map(repr, node["enum"]))) + "]"
    if "const" in node:
        return f"const[{node['const']!r}]"
    if node.get("type") == "array":
        return f"array[{_type_of(node.get('items', {}), definitions)}]"
    if node.get("type") == "object" and "properties" not in node:
        values = node.get("additionalProperties", True)
        return f"map[{_type_of(values, definitions) if isinstance(values, dict) else 'any'}]"
    return str(node.get("type", "any"))


def _nested(node: dict[str, Any], definitions: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    """The models reachable from a field: through lists (``[]``), maps (``{}``), unions."""
    node = _resolve(node, definitions)
    if "properties" in node:
        yield "", node
    for member in node.get("anyOf", ()):
        yield from _nested(member, definitions)
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        for suffix, model in _nested(node["items"], definitions):
            yield "[]" + suffix, model
    if isinstance(node.get("additionalProperties"), dict):
        for suffix, model in _nested(node["additionalProperties"], definitions):
            yield "{}" + suffix, model


def _field_lines(model: dict[str, Any], definitions: dict[str, Any], path: str) -> Iterator[str]:
    required = set(model.get("required", ()))
    for name, field in model["properties"].items():
        dotted = f"{path}.{name}" if path else name
        presence = "required" if name in required else "optional"
        yield f"{dotted}: {_type_of(field, definitions)} ({presence})"
        for suffix, nested in _nested(field, definitions):
            yield from _field_lines(nested, definitions, dotted + suffix)


def report_fields(report_model: type[BaseModel] = Report) -> list[str]:
    """Every field of a report, one ``path: type (required|optional)`` line each, sorted."""
    schema = report_model.model_json_schema()
    return sorted(set(_field_lines(schema, schema.get("$defs", {}), "")))


def fingerprint(fields: list[str]) -> str:
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


def test_report_fields_changed_only_with_a_new_schema_version() -> None:
    fields = report_fields()
    current = fingerprint(fields)

    recorded = FINGERPRINTS.get(REPORT_SCHEMA_VERSION)
    assert recorded is not None, (
        f"REPORT_SCHEMA_VERSION {REPORT_SCHEMA_VERSION!r} has no recorded fingerprint: add "
        f"{REPORT_SCHEMA_VERSION!r}: {current!r} to FINGERPRINTS ({__name__})"
    )
    assert current == recorded, (
        f"the report's fields changed but REPORT_SCHEMA_VERSION is still "
        f"{REPORT_SCHEMA_VERSION!r}: bump REPORT_SCHEMA_VERSION in api_schemas/report.py "
        f"(a contract change: say what changed) and record {current!r} for the new version "
        "in FINGERPRINTS. The report's fields now:\n" + "\n".join(fields)
    )


def test_fields_are_read_through_lists_maps_and_optional_models() -> None:
    fields = report_fields()

    assert "sets: array[object] (required)" in fields
    assert "sets[].loo_error.nnk_weighted: number (required)" in fields
    assert "sets[].per_class[].label: integer|string (required)" in fields
    assert "sets[].regime: enum['homogeneous','not_interpolating','weighted']|null (required)" in (
        fields
    )
    assert "comparison.series: map[array[integer|null|number|string]] (required)" in fields
    assert "params.k: integer (optional)" in fields


def test_a_field_added_deep_in_the_report_changes_the_fingerprint() -> None:
    class NewerSetReport(SetReport):
        spectral_gap: float | None = None

    class NewerReport(Report):
        sets: list[NewerSetReport]

    assert "sets[].spectral_gap: null|number (optional)" in report_fields(NewerReport)
    assert fingerprint(report_fields(NewerReport)) != fingerprint(report_fields())


def test_every_recorded_version_has_its_own_fingerprint() -> None:
    assert len(set(FINGERPRINTS.values())) == len(FINGERPRINTS)
