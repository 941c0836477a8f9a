"""Default project names: from the git remote of a folder, else the folder's name."""

from __future__ import annotations

import configparser
import re
from pathlib import Path


def detect_project(folder: Path) -> str:
    """'owner/repo' from the origin remote of the enclosing git checkout, else the folder name."""
    folder = folder.resolve()
    for candidate in (folder, *folder.parents):
        git = candidate / ".git"
        if git.exists():
            remote = _remote_url(git)
            name = _name_from_url(remote) if remote else None
            return name or candidate.name or "default"
    return folder.name or "default"


def _remote_url(git: Path) -> str | None:
    if git.is_file():  # a worktree or submodule: ".git" holds "gitdir: <path>"
        text = git.read_text(errors="replace").strip()
        if not text.startswith("gitdir:"):
            return None
        gitdir = (git.parent / text.removeprefix("gitdir:").strip()).resolve()
        common = gitdir / "commondir"
        git = (gitdir / common.read_text().strip()).resolve() if common.exists() else gitdir
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read(git / "config", encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    remotes = [s for s in parser.sections() if s.startswith('remote "')]
    remotes.sort(key=lambda s: s != 'remote "origin"')
    for section in remotes:
        url = parser.get(section, "url", fallback=None)
        if url:
            return url
    return None


def _name_from_url(url: str) -> str | None:
    """git@github.com:acme/app.git, https://host/acme/app(.git), /srv/git/app -> 'acme/app' or 'app'."""
    local = url.startswith(("/", ".", "file://")) or re.match(r"^[A-Za-z]:[\\/]", url) is not None
    path = re.sub(r"^[a-z+]+://[^/]*/", "", url.strip())  # scheme://host/
    path = re.sub(r"^[^/@:]+@[^:]+:", "", path)  # user@host:
    parts = [p for p in path.removesuffix("/").removesuffix(".git").split("/") if p]
    if not parts:
        return None
    return "/".join(parts[-1:] if local else parts[-2:])
