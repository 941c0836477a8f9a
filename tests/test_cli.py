"""The human CLI: readable tables, --json for scripts, clear errors, and every command documented."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, ROOT, server_env


def run(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "server", *args], capture_output=True, text=True, env=server_env(db),
                          timeout=60, check=False)


def ok(db: str, *args: str) -> Any:
    result = run(db, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_person_can_store_search_list_get_and_delete_from_the_shell(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    stored = ok(db, "store", "Releases are cut on Thursdays", "--kind", "decision", "--tags", "release,process")
    mid = stored["id"]
    assert stored["tags"] == ["release", "process"]
    assert [r["id"] for r in ok(db, "search", "when are releases cut")["results"]] == [mid]
    assert [m["id"] for m in ok(db, "list")["memories"]] == [mid]
    assert ok(db, "get", mid)["content"] == "Releases are cut on Thursdays"
    table = run(db, "search", "releases")
    assert table.returncode == 0 and "Releases are cut on Thursdays" in table.stdout and "score" in table.stdout
    assert table.stdout.startswith("keyword search\n")
    # The table says which ranking ran and why not the one asked for (it said nothing, with results).
    fallback = run(db, "search", "releases", "--mode", "semantic").stdout
    assert fallback.startswith("keyword search: semantic search is off") and "Thursdays" in fallback
    assert ok(db, "delete", mid)["deleted"] is True
    assert ok(db, "status")["memories"] == 0


def test_cli_errors_are_one_line_and_exit_non_zero(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    result = run(db, "get", "nope")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("stackmemory:") and "expected a UUID" in result.stderr
    assert "Traceback" not in result.stderr
    empty = run(db, "store", "   ")
    assert empty.returncode == 1 and "content is empty" in empty.stderr
    # A folder given as the database: one line (aiosqlite's thread used to add a traceback after it).
    folder = run(str(tmp_path), "status")
    assert folder.returncode == 1 and folder.stderr.strip().count("\n") == 0 and "it is a folder" in folder.stderr
    # A bad setting is a configuration error (exit 2), not a traceback.
    for flags in (["--log-level", "verbose"],):
        bad = run(db, "status", *flags)
        assert bad.returncode == 2 and "configuration error" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("value", "expected"), [("0", "0 is out of range: give 1 to 20,000"),
                                               ("-5", "-5 is out of range"), ("many", "'many' is not a whole number")])
def test_a_batch_size_out_of_range_is_refused_with_the_range(tmp_path: Path, value: str, expected: str) -> None:
    """The range is checked where the flag is read, and the message gives it."""
    db = str(tmp_path / "cli.db")
    ok(db, "store", "one memory to move")
    result = run(db, "export", "--out", str(tmp_path / "out.jsonl"), f"--batch={value}")
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_status_never_prints_a_password(tmp_path: Path) -> None:
    result = subprocess.run([PYTHON, "-m", "server", "status"], capture_output=True, text=True, timeout=60,
                            env={**server_env("postgresql://app:s3cret-pw@127.0.0.1:1/none")}, check=False)
    assert result.returncode == 1
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "127.0.0.1" in result.stderr


def test_every_command_is_documented_in_the_readme() -> None:
    from server.cli import _parser

    readme = (ROOT / "README.md").read_text()
    sub = next(a for a in _parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert re.search(rf"stackmemory {name}\b", readme), f"`stackmemory {name}` is not in README.md"


def test_every_configuration_flag_names_its_environment_variable() -> None:
    from server.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    serve = sub.choices["serve"]  # type: ignore[index]
    for action in serve._actions:
        if action.option_strings and action.dest not in ("help",):
            assert "[env " in (action.help or ""), f"serve {action.option_strings[0]} does not name its env var"
