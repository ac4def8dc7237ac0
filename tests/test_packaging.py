"""The package's public surface, and that an installed wheel carries and finds its Lua."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest

import redbreaker
from redbreaker import _scripts
from redbreaker._config import SCRIPT_FIELDS, script_defaults

REPO = Path(__file__).resolve().parents[1]
LUA_FILES = sorted(p.name for p in (REPO / "lua").glob("*.lua"))


def _public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and type(value).__module__ != "__future__"  # `annotations`, bound by the future import
    }


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, has no duplicates, and equals the public names the package binds."""
    names = redbreaker.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert set(names) == _public_names(redbreaker)
    for name in names:
        assert getattr(redbreaker, name) is not None


def test_star_import_gives_exactly_all() -> None:
    """`from redbreaker import *` binds exactly __all__."""
    namespace: dict[str, Any] = {}
    exec("from redbreaker import *", namespace)
    namespace.pop("__builtins__", None)
    assert sorted(namespace) == redbreaker.__all__


def test_exceptions_hierarchy() -> None:
    """Every exported error derives from RedbreakerError; ConfigError is also a ValueError."""
    assert issubclass(redbreaker.ConfigError, ValueError)
    assert issubclass(redbreaker.PermitError, RuntimeError)
    for name in ("ConfigError", "CircuitOpenError", "PermitError", "StoreError"):
        assert issubclass(getattr(redbreaker, name), redbreaker.RedbreakerError)


def test_version_matches_metadata() -> None:
    """__version__ is the installed distribution's version (and pyproject's)."""
    assert redbreaker.__version__ == importlib.metadata.version("redbreaker")
    tomllib = pytest.importorskip("tomllib")
    with (REPO / "pyproject.toml").open("rb") as f:
        assert redbreaker.__version__ == tomllib.load(f)["project"]["version"]
    with pytest.raises(AttributeError):
        redbreaker.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_current_install_finds_scripts() -> None:
    """The installed package (editable here) finds every Lua script, _common.lua first."""
    folder = Path(str(_scripts.lua_dir()))
    package_dir = Path(redbreaker.__file__).resolve().parent
    if (package_dir / "lua").is_dir():  # a wheel install
        assert folder.resolve() == (package_dir / "lua").resolve()
    else:  # editable / source checkout: src/redbreaker -> the repository's lua/
        assert folder.resolve() == (package_dir.parents[1] / "lua").resolve()
    assert sorted(p.name for p in folder.glob("*.lua")) == LUA_FILES
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    # The Lua parser's field list is written in from the one Python table, with each
    # field's default (BreakerConfig()'s text).
    defaults = script_defaults()
    fields = ", ".join(
        f"{{ '{f.name}', {str(f.may_be_empty).lower()}, '{defaults[f.name]}' }}"
        for f in SCRIPT_FIELDS
    )
    common = common.replace("{--[[SCRIPT_FIELDS]]}", f"{{ {fields} }}")
    library = _scripts.library_source()
    assert library.startswith(f"#!lua name={_scripts.library_name()}\n{common}")
    for name in _scripts.SCRIPT_NAMES:
        body = (folder / f"{name}.lua").read_text(encoding="utf-8")
        source = _scripts.script_source(name)
        assert source == f"{common}\n{body}\nreturn {name}(KEYS, ARGV)\n"
        assert body in library
        assert f"redis.register_function('{_scripts.function_name(name)}', {name})" in library
    assert sorted(f"{n}.lua" for n in _scripts.SCRIPT_NAMES) == sorted(
        n for n in LUA_FILES if n != "_common.lua"
    )
    with pytest.raises(ValueError, match="no script named"):
        _scripts.script_source("nope")


# -- the built wheel, installed in a fresh venv -------------------------------------------

_PROBE = r"""
import importlib.metadata, json, sys
from pathlib import Path
import redbreaker
from redbreaker import _scripts

out = {
    "file": redbreaker.__file__,
    "prefix": sys.prefix,
    "version": redbreaker.__version__,
    "lua_dir": str(_scripts.lua_dir()),
    "scripts": {n: len(_scripts.script_source(n)) for n in _scripts.SCRIPT_NAMES},
    "typed": (Path(redbreaker.__file__).parent / "py.typed").is_file(),
    "entry_points": {},
    "sys_path": sys.path,
}
dist = importlib.metadata.distribution("redbreaker")
for ep in dist.entry_points:
    try:
        ep.load()
        out["entry_points"][ep.name] = "ok"
    except Exception as exc:
        out["entry_points"][ep.name] = f"{type(exc).__name__}: {exc}"
if len(sys.argv) > 1:
    # End to end against a real redis-server: the installed scripts run there.
    store = redbreaker.connect(sys.argv[1], prefix="wheel", clock=redbreaker.ManualClock())
    breaker = redbreaker.Breaker("installed", store=store, failure_threshold=1)
    out["call"] = breaker.call(lambda: "ok")
    try:
        breaker.call(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    out["state"] = breaker.state.value
    out["reset"] = breaker.reset().value
    store.close()
print(json.dumps(out))
"""


class InstalledWheel:
    """A wheel built from this checkout, installed (with redis only) in a plain venv."""

    def __init__(self, wheel: Path, python: Path, venv: Path, env: dict[str, str]) -> None:
        self.wheel = wheel
        self.python = python
        self.venv = venv
        self.env = env

    def probe(self, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [str(self.python), "-I", "-c", _PROBE, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.venv,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300, check=False
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """Build the wheel with pip (hatchling), make a venv without the editable install, and
    pip install the wheel and redis into it. Everything stays under pytest's tmp dir."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(TMPDIR=str(root), PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    dist = root / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(REPO)]
    if importlib.util.find_spec("hatchling") is not None:
        build.insert(4, "--no-build-isolation")  # use the hatchling already here: no download
    _run(build, env, root)
    wheels = list(dist.glob("redbreaker-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, root)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # With its declared dependencies: the wheel must run on what it asks for, nothing more.
    install = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    _run([*install, str(wheels[0])], env, root)
    return InstalledWheel(wheels[0], python, venv, env)


@pytest.mark.slow
def test_wheel_contents(installed_wheel: InstalledWheel) -> None:
    """The wheel carries every lua/*.lua as redbreaker/lua/ and the py.typed marker."""
    with zipfile.ZipFile(installed_wheel.wheel) as wheel:
        names = set(wheel.namelist())
    assert "redbreaker/py.typed" in names
    packaged_lua = sorted(n.removeprefix("redbreaker/lua/") for n in names if n.endswith(".lua"))
    assert packaged_lua == LUA_FILES
    assert all(n.startswith("redbreaker/lua/") for n in names if n.endswith(".lua"))
    assert not [n for n in names if n.startswith(("tests/", "lua/", "src/"))]
    for module in ("__init__", "_breaker", "_config", "_keys", "_scripts", "_state", "_store"):
        assert f"redbreaker/{module}.py" in names
    with zipfile.ZipFile(installed_wheel.wheel) as wheel:
        for lua in LUA_FILES:
            assert wheel.read(f"redbreaker/lua/{lua}") == (REPO / "lua" / lua).read_bytes()


@pytest.mark.slow
def test_installed_wheel_finds_its_scripts(installed_wheel: InstalledWheel) -> None:
    """In a plain venv, redbreaker imports from site-packages and loads its packaged Lua."""
    out = installed_wheel.probe()
    venv = installed_wheel.venv.resolve()
    package = Path(out["file"]).resolve().parent
    assert venv in package.parents
    assert "site-packages" in package.parts
    assert REPO not in package.parents  # not the editable checkout
    assert Path(out["lua_dir"]).resolve() == package / "lua"
    assert set(out["scripts"]) == set(_scripts.SCRIPT_NAMES)
    for name, length in out["scripts"].items():
        assert length == len(_scripts.script_source(name))  # the same text as the checkout's
    assert out["typed"] is True
    assert out["version"] == redbreaker.__version__


@pytest.mark.slow
def test_installed_wheel_console_scripts_resolve(installed_wheel: InstalledWheel) -> None:
    """Every entry point the wheel declares imports (a console script must not crash)."""
    out = installed_wheel.probe()
    assert out["entry_points"] == dict.fromkeys(out["entry_points"], "ok")


@pytest.mark.slow
def test_installed_wheel_runs_against_redis(
    installed_wheel: InstalledWheel, redis_url: str
) -> None:
    """The installed wheel's scripts run on a real redis-server: success, trip, reset."""
    out = installed_wheel.probe(redis_url)
    assert (out["call"], out["state"], out["reset"]) == ("ok", "open", "closed")
