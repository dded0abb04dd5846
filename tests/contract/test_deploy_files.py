"""docker-compose.yml, the Dockerfile and the README agree with the code.

Every command they run names something that exists (an ASGI app, a Celery app, its
queues), every NNKGEO_ variable they set is a Settings field, and the README's
configuration table lists every setting.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobstate.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTING_NAMES = {f"NNKGEO_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _as_argv(command: str | list[str]) -> list[str]:
    return command if isinstance(command, list) else shlex.split(command)


def _commands(compose: dict[str, Any], dockerfile: list[tuple[str, str]]) -> list[list[str]]:
    """The commands run from our image (Redis runs its own)."""
    commands = [
        _as_argv(service["command"])
        for name, service in compose["services"].items()
        if "command" in service and name != "redis"
    ]
    commands += [json.loads(arguments) for keyword, arguments in dockerfile if keyword == "CMD"]
    return commands


def _resolve_in_subprocess(targets: list[dict[str, str]]) -> dict[str, str]:
    """Import each target with a valid configuration, in a fresh interpreter."""
    probe = """
import importlib, json, sys
from celery import Celery
answers = {}
for target in json.loads(sys.argv[1]):
    module = importlib.import_module(target["module"])
    if target["kind"] == "asgi":
        app = getattr(module, target["attribute"])
        answers[target["label"]] = "asgi" if callable(app) else "not callable"
    else:
        celery = getattr(module, "app", None) or getattr(module, "celery", None)
        answers[target["label"]] = "celery" if isinstance(celery, Celery) else "no Celery app"
print(json.dumps(answers))
"""
    env = {
        "NNKGEO_API_KEYS": "probe:probe-key-0123456789abcdef",
        "NNKGEO_DATA_DIR": str(REPO_ROOT / "var" / "deploy-probe"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
    }
    completed = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(targets)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_every_command_names_an_app_that_exists(compose, dockerfile) -> None:
    targets = []
    queues = {
        Settings.model_fields["cpu_queue"].default,
        Settings.model_fields["gpu_queue"].default,
        Settings.model_fields["webhook_queue"].default,
    }
    for argv in _commands(compose, dockerfile):
        program = Path(argv[0]).name
        if program == "uvicorn":
            module, attribute = argv[1].split(":")
            targets.append(
                {"kind": "asgi", "module": module, "attribute": attribute, "label": argv[1]}
            )
        elif program == "celery":
            module = argv[argv.index("-A") + 1]
            targets.append(
                {"kind": "celery", "module": module, "attribute": "app", "label": module}
            )
            assert argv[argv.index("-A") + 2] == "worker", argv
            served = set(argv[argv.index("-Q") + 1].split(","))
            assert served <= queues, (argv, queues)
        else:
            pytest.fail(f"unexpected command {argv}")
    assert {t["kind"] for t in targets} == {"asgi", "celery"}

    answers = _resolve_in_subprocess(targets)

    assert answers == {t["label"]: t["kind"] for t in targets}


def test_every_nnkgeo_variable_is_a_setting(compose, dockerfile) -> None:
    variables = set()
    for service in compose["services"].values():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        variables |= {name for name in environment if name.startswith("NNKGEO_")}
    for keyword, arguments in dockerfile:
        if keyword == "ENV":
            variables |= set(re.findall(r"\b(NNKGEO_[A-Z0-9_]+)=", arguments))

    assert variables
    assert variables <= SETTING_NAMES, variables - SETTING_NAMES


def test_compose_layout(compose) -> None:
    services = compose["services"]
    assert set(services) >= {"api", "worker", "gpu-worker", "redis"}
    redis = services["redis"]
    assert "ports" not in redis, "Redis must not be reachable from outside the compose network"
    assert "--appendonly" in _as_argv(redis["command"])
    assert _as_argv(redis["command"])[_as_argv(redis["command"]).index("--appendonly") + 1] == "yes"
    gpu_worker = services["gpu-worker"]
    assert gpu_worker["profiles"] == ["gpu"]
    assert _as_argv(gpu_worker["command"])[_as_argv(gpu_worker["command"]).index("-Q") + 1] == "gpu"
    assert "-Q" in _as_argv(services["worker"]["command"])
    blob_mounts = {
        name: [volume for volume in services[name]["volumes"] if volume.startswith("blobs:")]
        for name in ("api", "worker", "gpu-worker")
    }
    for name, mounts in blob_mounts.items():
        data_dir = services[name]["environment"]["NNKGEO_DATA_DIR"]
        assert mounts == [f"blobs:{data_dir}"], (name, mounts)
    assert "blobs" in compose["volumes"]


def test_dockerfile_runs_as_a_non_root_user_on_python_3_11_slim(dockerfile) -> None:
    froms = [arguments for keyword, arguments in dockerfile if keyword == "FROM"]
    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert froms == ["python:3.11-slim"]
    assert users and users[-1] not in ("root", "0")
    assert any(
        "torch==2.13.0" in arguments for keyword, arguments in dockerfile if keyword == "RUN"
    )


def test_the_image_copies_every_package_and_installs_the_server_extra(dockerfile) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.split(".")[0].rstrip("*") for pattern in included}
    copied = {arguments.split()[0] for keyword, arguments in dockerfile if keyword == "COPY"}
    installs = [
        arguments
        for keyword, arguments in dockerfile
        if keyword == "RUN" and "pip install" in arguments
    ]

    assert packages <= copied, packages - copied
    assert any("pip install '.[server]'" in arguments for arguments in installs), installs
    assert "nnkgeo[engine]" in pyproject["project"]["optional-dependencies"]["server"]


def test_the_image_warms_a_writable_numba_cache_after_installing_the_engine(dockerfile) -> None:
    """numba compiles the CPU solve on first use (10-40 s) unless its cache is warm, and
    site-packages is read-only to the runtime user: the cache lives in NUMBA_CACHE_DIR,
    filled at build by the kernel's own warm-up and handed to the user the image runs as."""
    env = " ".join(arguments for keyword, arguments in dockerfile if keyword == "ENV")
    settings = dict(re.findall(r"(NUMBA_[A-Z_]+)=(\S+)", env))
    assert settings.get("NUMBA_CACHE_DIR") == "/var/cache/numba", settings
    assert settings.get("NUMBA_THREADING_LAYER") == "omp", settings
    runs = [arguments for keyword, arguments in dockerfile if keyword == "RUN"]
    assert any("libgomp1" in arguments for arguments in runs), "the omp layer needs libgomp"
    steps = [keyword if keyword != "RUN" else arguments for keyword, arguments in dockerfile]
    install = next(i for i, step in enumerate(steps) if "pip install '.[server]'" in step)
    warm = next(i for i, step in enumerate(steps) if "-m workers.geometry.nnk_kernel" in step)
    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert install < warm < steps.index("USER"), "warm after the install, as root"
    chown = rf"chown -R {users[-1]}:\S+ \"?\$\{{?NUMBA_CACHE_DIR"
    assert re.search(chown, steps[warm]), steps[warm]


def test_readme_starts_with_the_two_commands_and_documents_every_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    first_lines = [line for line in readme.splitlines() if line.strip()][:4]
    # The title first, then the two commands directly under it (issue 15).
    assert first_lines[0] == "# nnkgeo", first_lines
    assert any(line.startswith("./scripts/demo.sh") for line in first_lines), first_lines
    assert any(line.startswith("./scripts/test.sh") for line in first_lines), first_lines
    documented = set(re.findall(r"`(NNKGEO_[A-Z0-9_]+)`", readme))
    assert documented >= SETTING_NAMES, SETTING_NAMES - documented
    assert "## Local analysis (no server)" in readme


def test_workers_keep_the_model_sandbox_enforceable(compose, dockerfile) -> None:
    """Stands in for a Docker daemon, which this machine lacks: nothing in the deploy files
    turns off what the sandbox needs (seccomp filters, Landlock) or allows unsandboxed
    models; the worker's start-up probe checks the rest on the real host."""
    for name in ("worker", "gpu-worker"):
        service = compose["services"][name]
        assert not service.get("privileged", False), name
        options = [str(option).replace("=", ":") for option in service.get("security_opt", [])]
        assert "no-new-privileges:true" in options, (name, options)
        assert not any(
            option.startswith(("seccomp:unconfined", "apparmor:unconfined")) for option in options
        )
        assert not service.get("cap_add"), (name, service.get("cap_add"))
        environment = {**compose["x-nnkgeo-env"], **service.get("environment", {})}
        assert "NNKGEO_UNSAFE_ALLOW_UNSANDBOXED_MODELS" not in environment, name
    copied = [arguments.split()[0] for keyword, arguments in dockerfile if keyword == "COPY"]
    assert "modelcheck" in copied, "the API checks uploaded models with modelcheck"
