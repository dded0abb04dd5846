"""docs/ALGORITHM.md keeps up with the report: every field, regime and parameter is there.

The document is what users read to understand a report (the README and the HTML page
point to it), so a field added to the report schema without a word in it fails here,
and so does a parameter whose documented default drifts from the code's.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from api_schemas import AnalysisParams, Report
from api_schemas.report import Regime

ROOT = Path(__file__).resolve().parents[2]
ALGORITHM = ROOT / "docs" / "ALGORITHM.md"


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if typing.get_origin(annotation) is None:
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        return [annotation] if is_model else []  # type: ignore[list-item]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _report_fields() -> list[str]:
    """Every field of the report, as ``Model.field``, through every nested model."""
    seen: set[type[BaseModel]] = set()
    fields: list[str] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            fields.append(f"{model.__name__}.{name}")
            for nested in _models_in(field.annotation):
                walk(nested)

    walk(Report)
    return fields


def _in_code(text: str, name: str) -> bool:
    """Whether ``name`` is a word of some `code` span of ``text`` (alone or dotted)."""
    return re.search(rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`", text) is not None


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_report_field_is_named_in_the_algorithm_document() -> None:
    doc = ALGORITHM.read_text(encoding="utf-8")
    fields = _report_fields()
    assert len(fields) > 100, "the walk should reach the nested models"
    missing = [field for field in fields if not _in_code(doc, field.split(".")[1])]
    assert not missing, f"document these report fields in docs/ALGORITHM.md: {missing}"


def test_every_regime_is_defined_with_its_rule() -> None:
    doc = ALGORITHM.read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for regime in typing.get_args(Regime):
        # A row of the regime table: `name` | its rule | what it says.
        assert re.search(rf"^\| `{regime}` \| [^|]+ \| [^|]+ \|$", doc, re.MULTILINE), regime
        assert re.search(rf"^  \| `{regime}` \| [^|]+ \| [^|]+ \|$", readme, re.MULTILINE), regime


def _documented_default(value: object) -> str:
    """How the parameters table writes a default."""
    if value is None:
        return "unset (auto)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(value) or "none"
    if isinstance(value, str):
        return f"`{value}`"
    return f"{value:,}"


def test_parameters_table_has_every_parameter_with_its_default() -> None:
    doc = ALGORITHM.read_text(encoding="utf-8")
    section = doc[doc.index("## Parameters") :]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, re.MULTILINE))
    expected = {
        name: _documented_default(field.get_default(call_default_factory=True))
        for name, field in AnalysisParams.model_fields.items()
    }
    assert rows == expected


def test_links_to_the_document_and_within_it_resolve() -> None:
    doc = ALGORITHM.read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    anchors = {_slug(h) for h in re.findall(r"^#{2,4} (.+)$", doc, re.MULTILINE)}
    inner = re.findall(r"\]\(#([\w\-]+)\)", doc)
    from_readme = re.findall(r"\]\(docs/ALGORITHM\.md#([\w\-]+)\)", readme)
    assert inner and from_readme
    assert set(inner + from_readme) <= anchors, set(inner + from_readme) - anchors
    # The README sends readers here, never to a design file that is not in the repository.
    assert "](docs/ALGORITHM.md)" in readme
    assert "DESIGN" not in readme
    for linked in re.findall(r"\]\(([\w.\-/]+\.md)", doc):
        assert (ALGORITHM.parent / linked).is_file(), linked


def test_html_page_names_the_document() -> None:
    from htmlreport.page import ALGORITHM_DOC

    assert (ROOT / ALGORITHM_DOC).is_file()
