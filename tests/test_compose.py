"""``docker compose up`` shows it all: Redis, demo workers that keep tripping and recovering,
and the dashboard. Docker does not run in CI, so this reads docker-compose.yml and the
Dockerfile and checks what can be checked without it: the services exist, no host port
clashes with a local Redis, every command is one the ``redbreaker`` parser accepts (with
the arguments the services rely on), start order waits for Redis to be healthy, and the
image installs the extras those commands need.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from redbreaker import _cli
from redbreaker._demo_report import FOREVER_PREFIX

if TYPE_CHECKING:
    import argparse

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
REDIS_URL = "redis://redis:6379/0"  # the redis service, by its name on the compose network


def _services() -> dict[str, dict[str, Any]]:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    assert isinstance(services, dict)
    return services


def _interpolated(text: str) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR-default}`` / ``${VAR}`` with nothing set."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def _published(port: object) -> tuple[str, str] | None:
    """(host port, container port) of one ``ports`` entry; None if it publishes nothing."""
    if isinstance(port, dict):
        published = port.get("published")
        target = str(port["target"])
        return None if published is None else (_interpolated(str(published)), target)
    text = _interpolated(str(port)).split("/")[0]
    parts = text.rsplit(":", 2)
    if len(parts) == 1:
        return None  # "6379" alone: a random host port, never 6379 itself
    return parts[-2], parts[-1]


def _parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` (a service's command) through the redbreaker command's own parser."""
    if argv[:3] == ["python", "-m", "redbreaker"]:
        args = argv[3:]
    elif argv[:1] == ["redbreaker"]:
        args = argv[1:]
    else:
        pytest.fail(f"not a redbreaker command: {argv}")
    build = getattr(_cli, "_build_parser", None) or getattr(_cli, "build_parser", None)
    assert build is not None, "redbreaker._cli has no parser builder"
    parser: argparse.ArgumentParser = build()
    try:
        return parser.parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"redbreaker's parser refuses {shlex.join(argv)} (exit {exc.code})")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _installed_extras() -> set[str]:
    extras: set[str] = set()
    for keyword, rest in _dockerfile_instructions():
        if keyword == "RUN" and "pip install" in rest:
            for group in re.findall(r"\.\[([^\]]*)\]", rest):
                extras.update(e.strip() for e in group.split(","))
    return extras


def _defined_extras() -> set[str]:
    """The names under ``[project.optional-dependencies]`` (no tomllib on Python 3.10)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_.-]+) = \[", section, re.M))


def test_the_three_services_exist() -> None:
    assert {"redis", "demo", "dashboard"} <= set(_services())


def test_nothing_publishes_the_host_port_of_a_local_redis() -> None:
    """A Redis already on localhost:6379 must not stop ``docker compose up``."""
    for name, service in _services().items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            published = _published(port)
            if published is not None:
                assert published[0].rpartition(":")[2] != "6379", (name, port)


def test_redis_publishes_no_port() -> None:
    assert not _services()["redis"].get("ports"), "the redis service is internal"


def test_demo_runs_the_forever_demo_against_the_redis_service() -> None:
    command = _services()["demo"]["command"]
    args = _parse(command)
    assert args.command == "demo"
    assert args.url == REDIS_URL
    assert getattr(args, "forever", False) is True, "the demo must keep tripping: --forever"


def test_dashboard_serves_the_demo_on_its_published_port() -> None:
    service = _services()["dashboard"]
    args = _parse(service["command"])
    assert args.command == "dashboard"
    assert args.url == REDIS_URL
    assert args.prefix == FOREVER_PREFIX, "the dashboard must read the demo's key prefix"
    assert args.host == "0.0.0.0", "inside a container it must listen beyond loopback"
    published = [p for p in map(_published, service.get("ports", [])) if p is not None]
    assert published, "the dashboard must be reachable from the host"
    host, target = published[0]
    assert target == str(args.port)
    assert host.rpartition(":")[2] not in {"6379", ""}
    # Optional: passed on only when set, so the dashboard is read-only without it.
    assert "REDBREAKER_ADMIN_TOKEN" in service.get("environment", [])


@pytest.mark.parametrize("name", ["demo", "dashboard"])
def test_services_wait_for_a_healthy_redis(name: str) -> None:
    services = _services()
    healthcheck = services["redis"].get("healthcheck")
    assert healthcheck is not None
    assert "ping" in healthcheck["test"]
    assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_redbreaker_command_parses() -> None:
    """Every service's command and the image's default CMD are valid invocations."""
    commands = [s["command"] for s in _services().values() if "command" in s]
    for keyword, rest in _dockerfile_instructions():
        if keyword == "CMD":
            commands.append(yaml.safe_load(rest))  # the JSON (exec) form
    assert len(commands) >= 3
    for command in commands:
        assert isinstance(command, list), f"use the exec form: {command!r}"
        _parse([str(part) for part in command])


def test_the_image_installs_the_extras_its_commands_need() -> None:
    """The dashboard needs the `dashboard` extra; the image's own CMD (the demo with no
    --url) needs the embedded Redis. Each extra exists in pyproject.toml."""
    extras = _installed_extras()
    assert {"dashboard", "embedded"} <= extras, extras
    assert extras <= _defined_extras(), sorted(extras - _defined_extras())
    for service in _services().values():
        if "build" in service:
            assert service["build"] in (".", "./", {"context": "."}), service["build"]
