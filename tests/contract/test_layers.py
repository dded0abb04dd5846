"""The parts depend one way: routes -> service -> jobstate <- workers -> engine.

Read from the source with `ast`, every import counted, those inside functions too (a lazy
import is still a dependency). A new edge that the architecture does not allow fails here
with the file and line; docs/ARCHITECTURE.md draws the same table.

The second half checks the same thing at run time for the libraries: the engine, which
the ``[engine]`` extra installs without the server's libraries, imports no Redis, Celery
or web framework.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "api_schemas",
    "modelcheck",
    "arrayfiles",
    "htmlreport",
    "jobstate",
    "service",
    "workers",
    "nnkgeo",
)

# Which of our packages each part may import. Modules not named in EXCEPTIONS follow the
# rule of their top-level package.
ALLOWED: dict[str, frozenset[str]] = {
    "api_schemas": frozenset(),
    "modelcheck": frozenset(),
    "arrayfiles": frozenset({"api_schemas"}),
    "htmlreport": frozenset({"api_schemas"}),
    "jobstate": frozenset({"api_schemas"}),
    "service": frozenset({"api_schemas", "jobstate", "arrayfiles", "modelcheck"}),
    "workers": frozenset({"api_schemas", "jobstate", "arrayfiles", "modelcheck", "htmlreport"}),
    # The client and the remote CLI: on api_schemas alone.
    "nnkgeo": frozenset({"api_schemas"}),
}
# Module prefixes with rules of their own, most specific first.
EXCEPTIONS: tuple[tuple[str, frozenset[str]], ...] = (
    # The local commands run the engine in-process (the [engine] extra).
    ("nnkgeo.cli", frozenset({"api_schemas", "workers", "arrayfiles", "htmlreport", "jobstate"})),
    # log_report(html=True) renders the page the worker would.
    ("nnkgeo.integrations", frozenset({"api_schemas", "htmlreport"})),
)
# The engine core imports only the job state's pure leaves: what it shares with submission.
ENGINE_JOBSTATE_LEAVES = frozenset(
    {
        "jobstate.errors",
        "jobstate.checks",
        "jobstate.memory_budget",
        "jobstate.model_footprint",
        "jobstate.data_paths",
        "jobstate.version",
    }
)
ENGINE_PACKAGES = ("workers.geometry", "workers.models")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> Iterator[tuple[str, int]]:
    """Every absolute module an import statement in ``path`` names, with its line."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno
            # `from jobstate import store` names the module jobstate.store.
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


def _rule_of(module: str) -> frozenset[str]:
    for prefix, allowed in EXCEPTIONS:
        if module == prefix or module.startswith(prefix + "."):
            return allowed
    return ALLOWED[module.split(".")[0]]


def _sources(root: Path) -> list[Path]:
    return sorted(path for package in PACKAGES for path in (root / package).rglob("*.py"))


def forbidden_imports(root: Path) -> list[str]:
    """``file:line imports module`` for each import the table above does not allow."""
    violations: dict[tuple[Path, int], str] = {}
    for path in _sources(root):
        module = _module_name(path, root)
        allowed = _rule_of(module) | {module.split(".")[0]}
        for target, line in _imports(path, root):
            top = target.split(".")[0]
            if top in PACKAGES and top not in allowed:
                # One line per statement: `from a import b` names a and a.b.
                violations.setdefault(
                    (path, line), f"{path.relative_to(root)}:{line} imports {target}"
                )
    return list(violations.values())


def test_every_import_between_parts_is_allowed() -> None:
    violations = forbidden_imports(REPO_ROOT)
    assert violations == [], "imports the architecture forbids:\n" + "\n".join(violations)


def test_the_engine_imports_only_the_job_states_pure_leaves_and_no_task_code() -> None:
    violations = []
    for path in _sources(REPO_ROOT):
        module = _module_name(path, REPO_ROOT)
        if not module.startswith(ENGINE_PACKAGES):
            continue
        for target, line in _imports(path, REPO_ROOT):
            is_state = target.startswith("jobstate.") and not any(
                target == leaf or target.startswith(leaf + ".") for leaf in ENGINE_JOBSTATE_LEAVES
            )
            # jobstate.errors.InvalidInputError: a name inside a leaf, not a module.
            if is_state and target.rpartition(".")[0] in ENGINE_JOBSTATE_LEAVES:
                is_state = False
            is_task_code = target.startswith("workers.") and not target.startswith(ENGINE_PACKAGES)
            if is_state or is_task_code:
                violations.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {target}")
    assert violations == [], "the engine reaches past its layer:\n" + "\n".join(violations)


def test_the_checker_reports_lazy_relative_and_from_package_imports(tmp_path: Path) -> None:
    files = {
        "service/routes/probe.py": "def f():\n    from workers.tasks import run_job\n",
        "jobstate/probe.py": "from service import main\n",
        "nnkgeo/client/probe.py": "from ...workers import celery_app\n",
        "nnkgeo/cli/local.py": "import workers.geometry\n",
        "arrayfiles/probe.py": "import api_schemas\nimport jobstate.errors\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    assert forbidden_imports(tmp_path) == [
        "arrayfiles/probe.py:2 imports jobstate.errors",
        "jobstate/probe.py:1 imports service",
        "nnkgeo/client/probe.py:1 imports workers",
        "service/routes/probe.py:2 imports workers.tasks",
    ]


_ENGINE_PROBE = """
import json, sys
import workers.geometry, workers.models, arrayfiles, htmlreport
print(json.dumps(sorted(name for name in {names} if name in sys.modules)))
"""
SERVER_LIBRARIES = ("redis", "celery", "kombu", "fastapi", "starlette", "uvicorn", "service")


def test_the_engine_loads_no_server_library() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _ENGINE_PROBE.format(names=repr(SERVER_LIBRARIES))],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the engine loaded {loaded}"
