"""Rules about the code's shape that a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path

from server import __version__
from server.app import tool_names

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_layers_point_one_way_tools_to_service_to_storage() -> None:
    allowed_tools = {"server.service", "server.models", "server.errors", "server.accounts",
                     "server.changes", "server.tasks"}
    for path in modules("tools"):
        ours = {n for n in imports(path) if n.split(".")[0] in ("server", "tools")}
        bad = {n for n in ours if n.split(".")[0] == "server" and n not in allowed_tools}
        assert not bad, f"{path.relative_to(ROOT)} reaches past the service: {bad}"
    for path in modules("server"):
        if path.name in ("app.py", "cli.py"):
            continue
        assert not any(n.split(".")[0] == "tools" for n in imports(path)), f"{path.name} imports tools/"
    for path in modules("server/storage"):
        bad = {n for n in imports(path) if n in ("server.service", "server.app", "server.cli")}
        assert not bad, f"{path.relative_to(ROOT)} imports a higher layer: {bad}"


def test_drivers_are_imported_only_by_their_adapters() -> None:
    drivers = {"aiosqlite": "sqlite.py", "psycopg": "postgres.py", "psycopg_pool": "postgres.py"}
    for path in modules("server") + modules("tools"):
        for name in imports(path):
            owner = drivers.get(name.split(".")[0])
            assert owner is None or path.name == owner, f"{path.relative_to(ROOT)} imports {name}"


def test_configuration_is_read_only_in_config() -> None:
    for path in modules("server") + modules("tools"):
        if path.name == "config.py":
            continue
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, f"{path.relative_to(ROOT)} reads the environment"


def test_stdout_is_left_to_the_protocol() -> None:
    for path in modules("server") + modules("tools"):
        if path.name == "cli.py":
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{path.relative_to(ROOT)} prints to stdout"


def test_the_manifest_lists_exactly_the_registered_tools_and_the_package_version() -> None:
    manifest = json.loads((ROOT / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tools"]] == tool_names()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert manifest["version"] == project["version"] == __version__
    assert manifest["server"]["entry_point"] == "server/main.py"
    assert (ROOT / manifest["server"]["entry_point"]).is_file()


def test_manifest_user_config_maps_to_documented_environment_variables() -> None:
    from server.config import ENV_VARS

    env = json.loads((ROOT / "manifest.json").read_text())["server"]["mcp_config"]["env"]
    for name in env:
        assert name == "PYTHONPATH" or name in ENV_VARS, f"manifest sets {name}, which config.py does not read"
