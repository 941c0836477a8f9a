"""Issue 5 (Teams): who sees and changes which memory, end to end. Every check goes through a real
`stackmemory serve --transport http` process with real API tokens (STACKMEMORY_AUTH=tokens), on SQLite
and on PostgreSQL; users, workspaces and tokens are made with the Accounts service straight against the
database, as the operator's CLI does.

- The matrix: every tool x every role (owner, admin, member, reader, outsider) x every kind of target
  (own / someone else's, personal / team workspace, private / team memory), generated from the rules
  tables below and run one after another against one server per backend. Each memory carries a unique
  marker word; no reply may ever carry the marker of a memory its caller may not see.
- A raw-SQL bypass attempt on PostgreSQL: row-level security holds without the application's filters.
- 100 users with distinct tokens at once over Streamable HTTP.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import pytest

from server.accounts import Accounts, Caller
from tests.conftest import as_operator
from tests.test_transports import Served

pytestmark = pytest.mark.anyio
T = TypeVar("T")

# ---- the rules --------------------------------------------------------------------------------------

# The five callers, one per role in the team workspace "platform"; olga is not in it but owns "secret".
USERS = {"owner": "alice", "admin": "adam", "member": "mia", "reader": "rex", "outsider": "olga"}
ROLES = tuple(USERS)  # the column order of every table below
NAMES = tuple(USERS.values())
PLATFORM_ROLES = {"alice": "owner", "adam": "admin", "mia": "member", "rex": "reader"}
# A second team, "lab", where the roles differ: a destination for copies made by someone other than the
# memory's author, and proof that a role counts per workspace (adam is admin in platform, reader here).
LAB_ROLES = {"mia": "owner", "alice": "member", "adam": "reader", "rex": "member"}
MEMBERS = {"platform": len(PLATFORM_ROLES), "lab": len(LAB_ROLES), "secret": 1}

# Targets, relative to the caller ("me"): (workspace, visibility, author). rex and olga wrote their
# platform memories while they were members; rex was then made reader and olga removed.
TARGETS = ("own_personal", "other_personal", "other_personal_team", "own_platform_private",
           "own_platform_team", "other_platform_private", "other_platform_team", "secret_private",
           "secret_team")


def target_spec(role: str, target: str) -> tuple[str, str, str]:
    me = USERS[role]
    other = "mia" if me == "alice" else "alice"  # someone else's personal workspace
    peer = "adam" if me == "alice" else "alice"  # someone else in platform (the owner, or for her, the admin)
    return {
        "own_personal": (f"~{me}", "private", me),
        "other_personal": (f"~{other}", "private", other),
        "other_personal_team": (f"~{other}", "team", other),  # "team" in a personal workspace: still only its owner
        "own_platform_private": ("platform", "private", me),
        "own_platform_team": ("platform", "team", me),
        "other_platform_private": ("platform", "private", peer),
        "other_platform_team": ("platform", "team", peer),
        "secret_private": ("secret", "private", "olga"),
        "secret_team": ("secret", "team", "olga"),
    }[target]


# Columns: owner admin member reader outsider (the roles in platform; in lab they are member, reader,
# owner, member and none).
# READ: get_memory by id; also list/search/context across "all" workspaces. + sees it, - "no memory".
READ = {
    "own_personal":           "+++++",
    "other_personal":         "-----",
    "other_personal_team":    "-----",
    "own_platform_private":   "++++-",  # a removed member no longer sees even their own memories there
    "own_platform_team":      "++++-",
    "other_platform_private": "-----",  # not even the owner or an admin sees someone else's private memory
    "other_platform_team":    "++++-",
    "secret_private":         "----+",
    "secret_team":            "----+",
}
# SCAN: list_memories / search_memory / get_context naming the memory's workspace.
# + listed, 0 answered without it, W "you have no workspace" (the same as for a workspace that does not exist).
SCAN = {
    "own_personal":           "+++++",
    "other_personal":         "WWWWW",
    "other_personal_team":    "WWWWW",
    "own_platform_private":   "++++W",
    "own_platform_team":      "++++W",
    "other_platform_private": "0000W",
    "other_platform_team":    "++++W",
    "secret_private":         "WWWW+",
    "secret_team":            "WWWW+",
}
# WRITE: update_memory and delete_memory. + done, D permission error, - "no memory".
WRITE = {
    "own_personal":           "+++++",
    "other_personal":         "-----",
    "other_personal_team":    "-----",
    "own_platform_private":   "+++D-",  # readers change nothing, not even what they wrote as members
    "own_platform_team":      "+++D-",
    "other_platform_private": "-----",
    "other_platform_team":    "++DD-",  # admins and owners change anyone's team memory; members only their own
    "secret_private":         "----+",
    "secret_team":            "----+",
}
# SHARE, per destination: c copied (a team memory, author kept), i made team-visible in place,
# n already team-visible, I refused (a personal workspace), D permission error, W no such workspace,
# - "no memory".
SHARE = {
    "platform": {
        "own_personal":           "cccDW",
        "other_personal":         "---DW",
        "other_personal_team":    "---DW",
        "own_platform_private":   "iiiDW",
        "own_platform_team":      "nnnDW",
        "other_platform_private": "---DW",
        "other_platform_team":    "nnnDW",
        "secret_private":         "---DW",
        "secret_team":            "---DW",
    },
    "secret": {
        "own_personal":           "WWWWc",
        "other_personal":         "WWWW-",
        "other_personal_team":    "WWWW-",
        "own_platform_private":   "WWWW-",
        "own_platform_team":      "WWWW-",
        "other_platform_private": "WWWW-",
        "other_platform_team":    "WWWW-",
        "secret_private":         "WWWWi",
        "secret_team":            "WWWWn",
    },
    "lab": {  # copies keep their author: e.g. rex copies alice's platform memory, alice stays its author
        "own_personal":           "cDccW",
        "other_personal":         "-D--W",
        "other_personal_team":    "-D--W",
        "own_platform_private":   "cDccW",  # a copy of a private memory is a team memory of lab
        "own_platform_team":      "cDccW",
        "other_platform_private": "-D--W",
        "other_platform_team":    "cDccW",  # a reader of platform may copy what they read into a team of theirs
        "secret_private":         "-D--W",
        "secret_team":            "-D--W",
    },
    "~me": {
        "own_personal":           "IIIII",
        "other_personal":         "-----",
        "other_personal_team":    "-----",
        "own_platform_private":   "IIII-",
        "own_platform_team":      "IIII-",
        "other_platform_private": "-----",
        "other_platform_team":    "IIII-",
        "secret_private":         "----I",
        "secret_team":            "----I",
    },
}
# STORE, per (workspace, visibility asked for): p stored private, t stored team, D permission error,
# W no such workspace. Default visibility: private in a personal workspace, team in a team workspace.
STORE = {
    ("~me", None):            "ppppp",
    ("~me", "team"):          "ttttt",
    ("~other", None):         "WWWWW",
    ("platform", None):       "tttDW",
    ("platform", "private"):  "pppDW",
    ("platform", "team"):     "tttDW",
    ("platform-id", None):    "tttDW",  # named by id: the same rules, and an outsider learns nothing
    ("lab", None):            "tDttW",  # roles are per workspace: rex may write here, adam may not
    ("secret", None):         "WWWWt",
    ("secret", "private"):    "WWWWp",
    ("nowhere", None):        "WWWWW",
}
OUTCOMES = {"+": "success", "0": "success without it", "-": "not found", "W": "no such workspace",
            "D": "permission error", "I": "refused (personal workspace)", "c": "copied", "i": "shared in place",
            "n": "already shared", "p": "stored private", "t": "stored team"}
ERROR_TEXT = {"-": "no memory with id", "W": "you have no workspace", "D": "your role in",
              "I": "personal workspace"}

MARKER = re.compile(r"zebra[0-9a-f]{32}")


def marker() -> str:
    return "zebra" + uuid.uuid4().hex


def backend(db: str) -> str:
    return "postgres" if db.startswith("postgresql") else "sqlite"


# ---- the database, as the operator --------------------------------------------------------------------

async def operator(db: str, work: Callable[[Accounts], Awaitable[T]]) -> T:
    return await anyio.to_thread.run_sync(as_operator, db, work)  # type: ignore[no-any-return]


# ---- the world the matrix runs in ----------------------------------------------------------------------

@dataclass
class Mem:
    """A memory the tests made, and what they expect of it."""

    id: str
    marker: str
    content: str
    workspace: str
    visibility: str
    author: str
    version: int = 1
    deleted: bool = False

    def __str__(self) -> str:
        return f"{self.author}'s {self.visibility} memory in {self.workspace}"


@dataclass
class Reply:
    ok: bool
    data: Any
    text: str


class Failed(AssertionError):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


class World:
    """One served database: the users' clients, ids and tokens, every memory made, and the oracle that
    says who may see what (the rules of issue 5, independent of the server's code)."""

    def __init__(self, served: Served, ids: dict[str, str], tokens: dict[str, str],
                 workspace_ids: dict[str, str]) -> None:
        self.served = served
        self.ids = ids
        self.tokens = tokens
        self.workspace_ids = workspace_ids
        self.clients: dict[str, Any] = {}
        self.mems: dict[str, Mem] = {}
        self.by_marker: dict[str, list[Mem]] = {}
        self.members: dict[str, dict[str, str]] = {}  # user -> {workspace: role}
        self.calls = 0
        self._refs: dict[tuple[str, ...], str] = {}

    # -- the oracle --

    def set_members(self, platform: dict[str, str]) -> None:
        self.members = {name: {f"~{name}": "owner"} for name in NAMES}
        for name, role in platform.items():
            self.members[name]["platform"] = role
        for name, role in LAB_ROLES.items():
            self.members[name]["lab"] = role
        self.members["olga"]["secret"] = "owner"

    def can_see(self, user: str, m: Mem) -> bool:
        return (not m.deleted and m.workspace in self.members[user]
                and (m.visibility == "team" or m.author == user))

    def visible(self, user: str, workspace: str | None = None) -> set[str]:
        return {m.id for m in self.mems.values() if self.can_see(user, m)
                and (workspace is None or m.workspace == workspace)}

    def add(self, m: Mem) -> Mem:
        self.mems[m.id] = m
        self.by_marker.setdefault(m.marker, []).append(m)
        return m

    # -- calls --

    async def call(self, user: str, tool: str, args: dict[str, Any], *, mine: frozenset[str] = frozenset()
                   ) -> Reply:
        """Call a tool as `user`; any marker in the reply must belong to a memory the user may see (or be
        one of `mine`: text the caller sent in this very call)."""
        result = await self.clients[user].call_tool(tool, args)
        self.calls += 1
        text = result.content[0].text if result.content else ""
        reply = Reply(not result.is_error, result.structured_content, text)
        self.no_leak(user, tool, reply, mine)
        return reply

    def no_leak(self, user: str, tool: str, reply: Reply, mine: frozenset[str]) -> None:
        shown = reply.text
        if reply.ok and tool == "search_memory":  # the query is echoed back; only the results are output
            shown = json.dumps(reply.data["results"])
        elif reply.ok and tool == "get_context":  # so is the project
            shown = json.dumps(reply.data["sections"]) + reply.data["summary"].replace(reply.data["project"], "")
        for found in set(MARKER.findall(shown)) - mine:
            owners = self.by_marker.get(found, [])
            check(owners, f"LEAK: {tool} showed {user} a marker of no memory the tests know: {found}")
            check(any(self.can_see(user, m) for m in owners),
                  f"LEAK: {tool} showed {user} the content of {owners[0]} ({found}): {shown[:300]}")

    async def ok(self, user: str, tool: str, args: dict[str, Any], **kw: Any) -> Any:
        reply = await self.call(user, tool, args, **kw)
        check(reply.ok, f"{tool} {args} as {user} failed: {reply.text}")
        return reply.data

    async def reference(self, user: str, tool: str, code: str, args: dict[str, Any]) -> str:
        """The error `user` gets from `tool` for a memory id ("-") or workspace name ("W") that does not
        exist at all, with that id or name replaced by "<?>"."""
        key = (user, tool, code, str(args.get("workspace")) if code == "-" else "", str("history" in args))
        if key not in self._refs:
            missing = str(uuid.uuid4()) if code == "-" else "nowhere-" + uuid.uuid4().hex[:8]
            call = {**args, ("id" if code == "-" else "workspace"): missing}
            reply = await self.call(user, tool, call)
            check(not reply.ok, f"{tool} {call} as {user} should fail")
            self._refs[key] = reply.text.replace(missing if code == "-" else f"'{missing}'", "<?>")
        return self._refs[key]

    async def fails(self, user: str, tool: str, args: dict[str, Any], code: str, *, m: Mem | None = None,
                    about: str = "") -> Reply:
        """The call fails with the error `code` stands for (a permission error must name `about`); for a
        hidden memory or a foreign workspace the text is exactly the one for something that does not exist."""
        reply = await self.call(user, tool, args)
        check(not reply.ok, f"{tool} should have failed with {OUTCOMES[code]} but succeeded: {reply.text[:300]}")
        check(ERROR_TEXT[code] in reply.text, f"expected {OUTCOMES[code]} ({ERROR_TEXT[code]!r}), got: {reply.text}")
        if m is not None:
            check(m.marker not in reply.text and m.content not in reply.text,
                  f"the error text carries the memory's content: {reply.text}")
        if code == "D":
            check(about in reply.text, f"expected {about!r} in: {reply.text}")
        if code in "-W":
            ref = await self.reference(user, tool, code, args)
            given = args["id"] if code == "-" else f"'{args['workspace']}'"
            check(reply.text.replace(given, "<?>") == ref,
                  f"the error differs from the one for something that does not exist:\n  {reply.text}\n  {ref}")
        return reply

    async def store(self, user: str, workspace: str, visibility: str | None, note: str) -> Mem:
        mark = marker()
        content = f"{mark} common decision {note} by {user}"
        args: dict[str, Any] = {"content": content, "kind": "decision", "tags": [mark],
                                "project": f"proj-{mark}", "workspace": workspace}
        if visibility:
            args["visibility"] = visibility
        data = await self.ok(user, "store_memory", args, mine=frozenset({mark}))
        check(data["created"], f"not created: {data}")
        return self.add(Mem(data["id"], mark, content, workspace, data["visibility"], user))

    # -- checks shared by many cases --

    async def everyone_agrees(self, m: Mem) -> None:
        """After a change: each of the five sees the memory exactly when the rules say so."""
        for user in NAMES:
            reply = await self.call(user, "get_memory", {"id": m.id})
            check(reply.ok == self.can_see(user, m),
                  f"after the change {user} {'sees' if reply.ok else 'does not see'} {m} {m.id}: {reply.text[:200]}")
            if reply.ok:
                check(reply.data["visibility"] == m.visibility and reply.data["workspace"] == m.workspace,
                      f"{user} sees {reply.data['visibility']} in {reply.data['workspace']}, expected {m}")
            else:
                check("no memory with id" in reply.text, f"unexpected error for {user}: {reply.text}")

    async def unchanged(self, m: Mem) -> None:
        """After a refused change: the memory is as it was (checked by someone who may see it)."""
        viewer = m.author if self.can_see(m.author, m) else next(
            (u for u in NAMES if self.can_see(u, m)), None)
        if viewer is None:
            return  # e.g. olga's private memory in platform after she left it: nobody may see it
        got = await self.ok(viewer, "get_memory", {"id": m.id})
        check((got["content"], got["version"], got["visibility"]) == (m.content, m.version, m.visibility),
              f"a refused call changed {m}: now {got['content']!r} v{got['version']} {got['visibility']}")


# ---- cases ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    tool: str
    role: str
    target: str
    variant: str
    expect: str
    run: Callable[[], Awaitable[None]]

    def __str__(self) -> str:
        variant = f" [{self.variant}]" if self.variant else ""
        return (f"{self.tool}{variant} as {self.role} ({USERS[self.role]}) on {self.target}: "
                f"expect {OUTCOMES[self.expect]}")


def build_cases(w: World, fixtures: dict[tuple[str, str, str], Mem]) -> dict[str, list[Case]]:
    """Every case, by phase, from the tables above."""
    phases: dict[str, list[Case]] = {"before": [], "read": [], "store": [], "write": [], "after": []}

    for when in ("before", "after"):
        for role in ROLES:
            phases[when].append(Case("memory_status", role, "-", when, "+", partial(status_case, w, role)))
            phases[when].append(Case("list_workspaces", role, "-", when, "+", partial(workspaces_case, w, role)))
            if when == "after":
                phases[when].append(Case("list_memories", role, "everything", "paged, each workspace and all",
                                         "+", partial(sweep_list, w, role)))
                phases[when].append(Case("search_memory", role, "everything", "all, common word", "+",
                                         partial(sweep_search, w, role)))

    for i, role in enumerate(ROLES):
        for target in TARGETS:
            m = fixtures[(role, target, "read")]
            phases["read"].append(Case("get_memory", role, target, "", READ[target][i],
                                       partial(get_case, w, role, m, READ[target][i])))
            for tool in ("list_memories", "search_memory", "get_context"):
                for scope, code in (("its workspace", SCAN[target][i]),
                                    ("all", "+" if READ[target][i] == "+" else "0")):
                    phases["read"].append(Case(tool, role, target, f"workspace={scope}", code,
                                               partial(scan_case, w, tool, role, m, scope, code)))
            for tool in ("update_memory", "delete_memory"):
                code = WRITE[target][i]
                phases["write"].append(Case(tool, role, target, "", code,
                                            partial(write_case, w, tool, role, fixtures[(role, target, tool)], code)))
            for dest, table in SHARE.items():
                code = table[target][i]
                phases["write"].append(Case("share_memory", role, target, f"into {dest}", code,
                                            partial(share_case, w, role, fixtures[(role, target, f"share {dest}")],
                                                    dest, code)))
        for (workspace, visibility), codes in STORE.items():
            phases["store"].append(Case("store_memory", role, workspace, f"visibility={visibility}", codes[i],
                                        partial(store_case, w, role, workspace, visibility, codes[i])))
    return phases


async def get_case(w: World, role: str, m: Mem, expect: str) -> None:
    me = USERS[role]
    if expect == "-":
        await w.fails(me, "get_memory", {"id": m.id}, "-", m=m)
        await w.fails(me, "get_memory", {"id": m.id, "history": True}, "-", m=m)
        return
    got = await w.ok(me, "get_memory", {"id": m.id, "history": True})
    check(got["content"] == m.content and got["workspace"] == m.workspace and got["visibility"] == m.visibility,
          f"got {got['content']!r} in {got['workspace']} ({got['visibility']}), expected {m}")
    check(got["created_by"] == w.ids[m.author] and got["created_by_name"] == m.author
          and got["updated_by_name"] == m.author, f"authorship wrong: {got}")
    check(got["history"] == [], f"a new memory has no history: {got['history']}")


async def scan_case(w: World, tool: str, role: str, m: Mem, scope: str, expect: str) -> None:
    me = USERS[role]
    workspace = m.workspace if scope == "its workspace" else "all"
    by_tool: dict[str, dict[str, Any]] = {
        "list_memories": {"tags": [m.marker], "limit": 100},
        "search_memory": {"query": m.marker, "limit": 100, "mode": "keyword"},
        "get_context": {"project": f"proj-{m.marker}"},
    }
    args = by_tool[tool]
    args["workspace"] = workspace
    if expect == "W":
        await w.fails(me, tool, args, "W", m=m)
        return
    data = await w.ok(me, tool, args)
    if tool == "list_memories":
        found = data["memories"]
    elif tool == "search_memory":
        found = data["results"]
        for hit in found:
            check(hit["workspace"] == m.workspace, f"hit from {hit['workspace']}, expected {m.workspace}")
    else:
        found = [x for section in data["sections"] for x in section["memories"]]
    ids = [x["id"] for x in found]
    check(ids == ([m.id] if expect == "+" else []), f"expected {'only ' + m.id if expect == '+' else 'nothing'}, "
          f"got {ids}")
    if expect == "+":
        check(found[0]["content"] == m.content, f"content {found[0]['content']!r}")


async def write_case(w: World, tool: str, role: str, m: Mem, expect: str) -> None:
    me = USERS[role]
    before = m.content
    args: dict[str, Any] = {"id": m.id}
    if tool == "update_memory":
        args["content"] = f"{m.marker} common decision revised by {me}"
    if expect in "-D":
        role_there = w.members[me].get(m.workspace, "")
        await w.fails(me, tool, args, expect, m=m, about=f"your role in {m.workspace} is {role_there}")
        if tool == "update_memory":  # a stale version must not turn it into a conflict that tells the version
            await w.fails(me, tool, {**args, "expected_version": 7}, expect, m=m,
                          about=f"your role in {m.workspace} is {role_there}")
        await w.unchanged(m)
        return
    data = await w.ok(me, tool, args)
    if tool == "delete_memory":
        check(data["deleted"] is True and data["id"] == m.id, f"not deleted: {data}")
        m.deleted = True
        await w.everyone_agrees(m)
        return
    check(data["content"] == args["content"] and data["version"] == 2 and data["updated_by"] == w.ids[me],
          f"update not applied as expected: {data}")
    m.content, m.version = args["content"], 2
    got = await w.ok(me, "get_memory", {"id": m.id, "history": True})
    check(got["created_by_name"] == m.author and got["updated_by_name"] == me,
          f"created_by_name {got['created_by_name']}, updated_by_name {got['updated_by_name']}; "
          f"expected {m.author}, {me}")
    history = got["history"]
    check(len(history) == 1 and history[0]["version"] == 1 and history[0]["content"] == before
          and history[0]["changed_by"] == me, f"history: {history}")
    await w.everyone_agrees(m)
    # the prior version is exactly as visible as the memory itself
    for user in NAMES:
        reply = await w.call(user, "get_memory", {"id": m.id, "history": True})
        check(reply.ok == w.can_see(user, m), f"{user} and the history of {m}: {reply.text[:200]}")


async def share_case(w: World, role: str, m: Mem, dest: str, expect: str) -> None:
    me = USERS[role]
    dest_name = f"~{me}" if dest == "~me" else dest
    args = {"id": m.id, "workspace": dest_name}
    if expect in "-WDI":
        role_there = w.members[me].get(dest_name, "")
        await w.fails(me, "share_memory", args, expect, m=m,
                      about=f"your role in {dest_name} is {role_there}")
        await w.unchanged(m)
        return
    data = await w.ok(me, "share_memory", args)
    check(data["workspace"] == dest_name and data["copied"] == (expect == "c"), f"share answered {data}")
    if expect == "c":
        check(data["id"] != m.id, "a copy has an id of its own")
        copy = w.add(Mem(data["id"], m.marker, m.content, dest_name, "team", m.author))
        got = await w.ok(me, "get_memory", {"id": copy.id})
        check(got["workspace"] == dest_name and got["visibility"] == "team" and got["content"] == m.content,
              f"the copy: {got}")
        check(got["created_by"] == w.ids[m.author] and got["created_by_name"] == m.author,
              f"the copy's author is {got['created_by_name']}, expected {m.author}")
        check(got["metadata"].get("shared_from") == m.id, f"metadata {got['metadata']}")
        await w.everyone_agrees(copy)
        await w.everyone_agrees(m)  # the original stays where it was, as it was
        await w.unchanged(m)
        return
    check(data["id"] == m.id, f"shared in place under another id: {data}")
    if expect == "n":
        check("already visible" in data["message"], f"message {data['message']!r}")
        await w.unchanged(m)
        return
    m.visibility = "team"
    m.version += 1
    await w.everyone_agrees(m)
    await w.unchanged(m)


async def store_case(w: World, role: str, workspace: str, visibility: str | None, expect: str) -> None:
    me = USERS[role]
    name = {"~me": f"~{me}", "~other": "~mia" if me == "alice" else "~alice",
            "platform-id": w.workspace_ids["platform"], "nowhere": "nowhere-" + uuid.uuid4().hex[:8]
            }.get(workspace, workspace)
    if expect in "WD":
        mark = marker()
        args: dict[str, Any] = {"content": f"{mark} common decision refused", "workspace": name}
        if visibility:
            args["visibility"] = visibility
        shown = "platform" if workspace == "platform-id" else name
        await w.fails(me, "store_memory", args, expect,
                      about=f"your role in {shown} is {w.members[me].get(shown)}")
        return
    m = await w.store(me, name, visibility, f"stored as {role}")
    if workspace == "platform-id":
        m.workspace = "platform"
    check(m.visibility == {"p": "private", "t": "team"}[expect], f"stored {m.visibility}, expected {expect}")
    got = await w.ok(me, "get_memory", {"id": m.id})
    check(got["workspace"] == m.workspace and got["created_by_name"] == me, f"stored as {got}")
    await w.everyone_agrees(m)


async def status_case(w: World, role: str) -> None:
    me = USERS[role]
    data = await w.ok(me, "memory_status", {})
    live = w.visible(me)
    gone = {m.id for m in w.mems.values() if m.deleted and m.workspace in w.members[me]
            and (m.visibility == "team" or m.author == me)}
    check(data["memories"] == len(live), f"memory_status counts {data['memories']}, {me} may see {len(live)}")
    check(data["deleted"] == len(gone), f"memory_status counts {data['deleted']} deleted, expected {len(gone)}")
    check(data["by_kind"] == ({"decision": len(live)} if live else {}), f"by_kind {data['by_kind']}")


async def workspaces_case(w: World, role: str) -> None:
    me = USERS[role]
    data = await w.ok(me, "list_workspaces", {})
    got = [(x["workspace"], x["role"], x["personal"], x["members"], x["memories"]) for x in data["workspaces"]]
    want = [(ws, role_there, ws.startswith("~"), MEMBERS.get(ws, 1), len(w.visible(me, ws)))
            for ws, role_there in sorted(w.members[me].items(), key=lambda kv: (not kv[0].startswith("~"), kv[0]))]
    check(got == want, f"list_workspaces: {got}, expected {want}")
    ids = {x["workspace"]: x["workspace_id"] for x in data["workspaces"]}
    for ws, ws_id in ids.items():
        check(w.workspace_ids[ws] == ws_id, f"{ws} has id {ws_id}")


async def sweep_list(w: World, role: str) -> None:
    """Every page of list_memories, in each of the caller's workspaces and across all of them, is exactly
    what the rules let the caller see."""
    me = USERS[role]
    for workspace in [*w.members[me], "all"]:
        seen: list[str] = []
        cursor = None
        while True:
            args: dict[str, Any] = {"workspace": workspace, "limit": 100}
            if cursor:
                args["cursor"] = cursor
            page = await w.ok(me, "list_memories", args)
            seen += [x["id"] for x in page["memories"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        want = w.visible(me, None if workspace == "all" else workspace)
        check(len(seen) == len(set(seen)) and set(seen) == want,
              f"list_memories in {workspace}: {len(set(seen) - want)} unexpected, {len(want - set(seen))} missing")


async def sweep_search(w: World, role: str) -> None:
    me = USERS[role]
    data = await w.ok(me, "search_memory", {"query": "common decision", "workspace": "all", "limit": 100})
    visible = w.visible(me)
    check(data["results"] and len(data["results"]) == min(100, len(visible)),
          f"{len(data['results'])} results, {len(visible)} visible")
    for hit in data["results"]:
        check(hit["id"] in visible, f"search returned {hit['id']}, which {me} may not see")
        check(hit["workspace"] == w.mems[hit["id"]].workspace, f"hit workspace {hit['workspace']}")


# ---- the matrix ----------------------------------------------------------------------------------------

async def setup_team(acc: Accounts) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    ids = {name: (await acc.create_user(name)).id for name in NAMES}
    workspace_ids = {"platform": (await acc.create_workspace("platform", "alice")).workspace_id,
                     "lab": (await acc.create_workspace("lab", "mia")).workspace_id,
                     "secret": (await acc.create_workspace("secret", "olga")).workspace_id}
    for name in NAMES:
        workspace_ids[f"~{name}"] = (await acc.workspace(f"~{name}"))[0]
    # rex and olga start as members: they write memories there, then rex is made reader and olga leaves
    for name, role in (("adam", "admin"), ("mia", "member"), ("rex", "member"), ("olga", "member")):
        await acc.add_member("platform", name, role)
    for name, role in LAB_ROLES.items():
        if role != "owner":
            await acc.add_member("lab", name, role)
    tokens = {name: (await acc.create_token(name, "isolation tests")).token for name in NAMES}
    return ids, tokens, workspace_ids


async def demote_and_remove(acc: Accounts) -> None:
    await acc.set_role("platform", "rex", "reader")
    await acc.remove_member("platform", "olga")


PURPOSES = ("read", "update_memory", "delete_memory", *(f"share {d}" for d in SHARE))


async def test_isolation_matrix(db_target: str) -> None:
    """Every case of the tables, in order, against one served database; each failing case is reported
    with what it was and what went wrong, and the test fails once at the end."""
    started = time.monotonic()
    served = Served(db_target, "http", STACKMEMORY_RATE_LIMIT="0")  # ~2,000 calls as fast as they go: not a rate test
    try:
        ids, tokens, workspace_ids = await operator(db_target, setup_team)
        w = World(served, ids, tokens, workspace_ids)
        async with AsyncExitStack() as stack:
            for name in NAMES:
                w.clients[name] = await stack.enter_async_context(served.client(tokens[name]))
            # Fixture memories, one per case that touches a memory, written by their authors over HTTP.
            w.set_members({**PLATFORM_ROLES, "rex": "member", "olga": "member"})
            fixtures: dict[tuple[str, str, str], Mem] = {}

            async def write_as(author: str, jobs: list[tuple[tuple[str, str, str], str, str]]) -> None:
                for key, workspace, visibility in jobs:
                    fixtures[key] = await w.store(author, workspace, visibility, f"{key[1]} for {key[0]} {key[2]}")

            jobs: dict[str, list[tuple[tuple[str, str, str], str, str]]] = {name: [] for name in NAMES}
            for role in ROLES:
                for target in TARGETS:
                    workspace, visibility, author = target_spec(role, target)
                    for purpose in PURPOSES:
                        jobs[author].append(((role, target, purpose), workspace, visibility))
            async with anyio.create_task_group() as tg:
                for author, todo in jobs.items():
                    tg.start_soon(write_as, author, todo)
            await operator(db_target, demote_and_remove)
            w.set_members(PLATFORM_ROLES)
            setup_time = time.monotonic() - started

            phases = build_cases(w, fixtures)
            failures: list[str] = []
            timings = {}
            for phase, cases in phases.items():
                began = time.monotonic()
                for case in cases:
                    try:
                        await case.run()
                    except Failed as exc:
                        failures.append(f"{case}: {exc}")
                    except Exception as exc:  # noqa: BLE001 - report every case, then fail once
                        failures.append(f"{case}: {type(exc).__name__}: {exc}")
                timings[phase] = time.monotonic() - began
        total = sum(len(c) for c in phases.values())
        print(f"\n[{backend(db_target)}] {total} cases ({', '.join(f'{k} {len(v)}' for k, v in phases.items())}),"
              f" {w.calls} tool calls, {len(w.mems)} memories; setup {setup_time:.1f}s, "
              + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
              + f", total {time.monotonic() - started:.1f}s")
        assert not failures, f"{len(failures)} of {total} cases failed:\n" + "\n".join(failures)
    finally:
        served.stop()


# ---- row-level security against raw SQL ------------------------------------------------------------------

async def test_row_level_security_holds_against_raw_sql(pg_url: str, settings_for: Any) -> None:
    """Connected straight to PostgreSQL as the application's role, no filter of the application helps:
    the database itself shows olga only what she may see, and changes nothing of anyone else's.
    (PostgreSQL only: SQLite has no row-level security, only the application's filters.)"""
    db_target = pg_url
    import psycopg

    from server.app import Runtime

    marks: dict[str, str] = {}
    mem: dict[str, str] = {}
    async with Runtime(settings_for(db_target)).session() as svc:
        acc = Accounts(svc.accounts)
        users = {name: await acc.create_user(name) for name in ("alice", "mia", "olga")}
        await acc.create_workspace("platform", "alice")
        await acc.add_member("platform", "mia")
        await acc.create_workspace("secret", "olga")
        for key, author, workspace, visibility in (
                ("alice_team", "alice", "platform", "team"), ("alice_private", "alice", "platform", "private"),
                ("mia_private", "mia", "platform", "private"), ("alice_personal", "alice", "~alice", None),
                ("olga_personal", "olga", "~olga", None), ("olga_team", "olga", "secret", "team"),
                ("olga_private", "olga", "secret", "private")):
            marks[key] = marker()
            who = Caller(users[author].id, author)
            mem[key] = (await svc.store(f"{marks[key]} common", workspace=workspace, visibility=visibility,
                                        caller=who)).id
        alice = Caller(users["alice"].id, "alice")
        await svc.update(mem["alice_team"], content=f"{marks['alice_team']} common, revised", caller=alice)
    olgas = {mem[k] for k in ("olga_personal", "olga_team", "olga_private")}

    with psycopg.connect(db_target, autocommit=True) as conn:
        conn.execute("SET ROLE stackmemory_app")
        assert conn.execute("SELECT id, content FROM memories").fetchall() == [], "no caller: nothing visible"
        assert conn.execute("SELECT * FROM memory_history").fetchall() == []
        conn.execute("SELECT set_config('stackmemory.user_id', %s, false)", (users["olga"].id,))
        rows = conn.execute("SELECT id, content FROM memories").fetchall()
        assert {r[0] for r in rows} == olgas
        others = [marks[k] for k in marks if not k.startswith("olga")]
        assert not [r for r in rows if any(x in r[1] for x in others)]
        assert conn.execute("SELECT * FROM memory_history").fetchall() == [], "nor any other's history"
        assert conn.execute("SELECT id FROM memories WHERE workspace_id = (SELECT id FROM workspaces "
                            "WHERE name = 'platform')").fetchall() == []
        changed = conn.execute("UPDATE memories SET content = 'pwned' WHERE id = %s", (mem["alice_team"],))
        assert changed.rowcount == 0
        assert conn.execute("DELETE FROM memories WHERE id = %s", (mem["alice_team"],)).rowcount == 0
        assert conn.execute("UPDATE memories SET content = 'pwned' WHERE id <> ALL(%s)",
                            (list(olgas),)).rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # writing into a team she is not in
            conn.execute(
                "INSERT INTO memories (id, content, content_hash, kind, project, importance, author, created_at,"
                " updated_at, workspace_id, visibility, created_by, updated_by, dedup_owner)"
                " SELECT %s, 'planted', 'x', 'note', 'demo', 5, 'olga', now(), now(), id, 'team', %s, %s, ''"
                " FROM workspaces WHERE name = 'platform'",
                (str(uuid.uuid4()), users["olga"].id, users["olga"].id))
        # mia, a member of platform: its team memory, her own private one, never alice's private one
        conn.execute("SELECT set_config('stackmemory.user_id', %s, false)", (users["mia"].id,))
        assert {r[0] for r in conn.execute("SELECT id FROM memories").fetchall()} == {
            mem["alice_team"], mem["mia_private"]}
        assert conn.execute("UPDATE memories SET content = 'pwned' WHERE id = %s",
                            (mem["alice_team"],)).rowcount == 0, "a member cannot change someone else's"
        conn.execute("SELECT set_config('stackmemory.user_id', '', false)")
        assert conn.execute("SELECT id FROM memories").fetchall() == [], "an empty caller sees nothing"
        # as alice her memory is untouched
        conn.execute("SELECT set_config('stackmemory.user_id', %s, false)", (users["alice"].id,))
        content = conn.execute("SELECT content FROM memories WHERE id = %s", (mem["alice_team"],)).fetchone()
        assert content == (f"{marks['alice_team']} common, revised",)

    with psycopg.connect(db_target, autocommit=True) as conn:  # a fresh session, no caller set at all
        conn.execute("SET ROLE stackmemory_app")
        assert conn.execute("SELECT id, content FROM memories").fetchall() == []
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = 'stackmemory_app'"
                            ).fetchone() == (False, False)
        flags = conn.execute("SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                             "WHERE relname IN ('memories', 'memory_history') ORDER BY relname").fetchall()
        assert flags == [("memories", True, True), ("memory_history", True, True)]


# ---- semantic and hybrid search ----------------------------------------------------------------------------

@pytest.mark.parametrize("index", ["auto", "memory"])
async def test_semantic_search_shows_only_what_the_caller_may_see(db_target: str, index: str) -> None:
    """Vector search has filters of its own (pgvector; sqlite-vec or the in-process index, whose fallback
    ranks only allowed ids when the nearest neighbours are all someone else's): the real model, real
    tokens, and many near-identical memories the caller may not see closer to the query than theirs.
    (On PostgreSQL the index setting does not apply: both runs use pgvector.)"""
    from tests.test_semantic import shared_model

    served = Served(db_target, "http", STACKMEMORY_EMBEDDINGS="local", STACKMEMORY_VECTOR_INDEX=index,
                    STACKMEMORY_EMBEDDING_MODEL_PATH=str(shared_model()))

    async def team(acc: Accounts) -> dict[str, str]:
        for name in ("alice", "mia", "olga"):
            await acc.create_user(name)
        await acc.create_workspace("platform", "alice")
        await acc.add_member("platform", "mia")
        return {name: (await acc.create_token(name, "semantic")).token for name in ("alice", "mia", "olga")}

    try:
        tokens = await operator(db_target, team)
        async with AsyncExitStack() as stack:
            c = {name: await stack.enter_async_context(served.client(t)) for name, t in tokens.items()}
            owner: dict[str, tuple[str, str, str]] = {}  # marker -> (author, workspace, visibility)

            async def put(name: str, text: str, workspace: str, visibility: str) -> None:
                mark = marker()
                r = await c[name].call_tool("store_memory", {"content": f"{text} {mark}", "workspace": workspace,
                                                             "visibility": visibility})
                assert not r.is_error, r.content[0].text
                owner[mark] = (name, workspace, visibility)

            for i in range(30):  # the nearest neighbours of the query, none of them alice's to see
                await put("olga", f"The production deploy key is rotated every week, note {i}", "~olga", "private")
            for i in range(5):
                await put("mia", f"Production deploy keys rotate weekly, reminder {i}", "platform", "private")
            await put("alice", "Rotate the production deploy key every Monday", "platform", "team")
            await put("alice", "Office plants are watered on Thursdays", "~alice", "private")
            with anyio.fail_after(60):  # wait until the worker has embedded everything
                while True:
                    status = (await c["alice"].call_tool("memory_status", {})).structured_content
                    if status["semantic_search"] == "on" and status["pending_jobs"] == 0:
                        break
                    await anyio.sleep(0.2)

            def may_see(name: str, mark: str) -> bool:
                author, workspace, visibility = owner[mark]
                in_it = workspace == f"~{name}" or (workspace == "platform" and name in ("alice", "mia"))
                return in_it and (visibility == "team" or author == name)

            for name in tokens:
                for mode in ("semantic", "hybrid"):
                    for limit in (1, 3, 100):
                        r = await c[name].call_tool("search_memory", {
                            "query": "how often is the production deploy key rotated?", "mode": mode,
                            "workspace": "all", "limit": limit})
                        assert not r.is_error, r.content[0].text
                        data = r.structured_content
                        assert data["mode"] == mode, data.get("note")
                        shown = set(MARKER.findall(json.dumps(data["results"])))
                        assert all(may_see(name, m) for m in shown), (name, mode, limit, shown)
                        want = {m for m in owner if may_see(name, m)}
                        assert len(data["results"]) == min(limit, len(want)), (name, mode, limit, data["results"])
                        if limit == 100:
                            assert shown == want, (name, mode)
    finally:
        served.stop()


# ---- a hundred users at once ------------------------------------------------------------------------------

CROWD = 100


async def make_crowd(acc: Accounts) -> list[tuple[str, str, bool]]:
    """u000..u099 with a token each; the even ones (50) are members of the team workspace "crowd"."""
    users = []
    for i in range(CROWD):
        name = f"u{i:03d}"
        await acc.create_user(name)
        users.append((name, (await acc.create_token(name, "crowd")).token, i % 2 == 0))
    await acc.create_workspace("crowd", "u000")
    for name, _, member in users[1:]:
        if member:
            await acc.add_member("crowd", name)
    return users


async def test_hundred_concurrent_users_each_see_only_their_own(db_target: str) -> None:
    """100 users, each with a token and a session of their own, all open at once over Streamable HTTP.
    Each stores two private memories (members of crowd keep one of them in crowd, where the other members
    must not see it) and each member one team memory in crowd; then all search "all" at once."""
    started = time.monotonic()
    served = Served(db_target, "http")
    try:
        users = await operator(db_target, make_crowd)
        private = {name: marker() for name, _, _ in users}
        team = {name: marker() for name, _, member in users if member}
        members = len(team)
        arrived = 0
        all_stored = anyio.Event()
        open_sessions = 0
        most_open = 0
        failures: list[str] = []

        def arrive() -> None:
            nonlocal arrived
            arrived += 1
            if arrived == len(users):
                all_stored.set()

        async def user(name: str, token: str, member: bool) -> None:
            nonlocal open_sessions, most_open
            home = f"~{name}"
            waiting = True  # until this user has arrived at the barrier (so nobody waits for a failed one)
            try:
                async with served.client(token) as c:
                    open_sessions += 1
                    most_open = max(most_open, open_sessions)
                    for k, where in ((1, home), (2, "crowd" if member else home)):
                        r = await c.call_tool("store_memory", {"content": f"common note {k} of {name} "
                                                                          f"{private[name]}", "workspace": where,
                                                               "visibility": "private"})
                        assert not r.is_error, r.content[0].text
                        assert r.structured_content["visibility"] == "private"
                    if member:
                        r = await c.call_tool("store_memory", {"content": f"common crowd note of {name} "
                                                                          f"{team[name]}", "workspace": "crowd"})
                        assert not r.is_error, r.content[0].text
                        assert r.structured_content["visibility"] == "team"
                    waiting = False
                    arrive()
                    await all_stored.wait()  # everyone has stored, with every session open: all search at once
                    r = await c.call_tool("search_memory", {"query": "common", "workspace": "all", "limit": 100})
                    open_sessions -= 1
                assert not r.is_error, r.content[0].text
                results = r.structured_content["results"]
                allowed = {home, "crowd"} if member else {home}
                assert {h["workspace"] for h in results} <= allowed, {h["workspace"] for h in results}
                shown = set(MARKER.findall(json.dumps(results)))
                may = {private[name], *(team.values() if member else ())}
                assert shown <= may, f"saw markers of others: {sorted(shown - may)[:5]}"
                mine = [h for h in results if private[name] in h["content"]]
                crowd = [h for h in results if h["visibility"] == "team"]
                assert len(results) == len(mine) + len(crowd), results
                assert sorted(h["workspace"] for h in mine) == sorted([home, "crowd" if member else home]), mine
                assert all(h["visibility"] == "private" for h in mine), mine
                assert len(crowd) == (members if member else 0), f"{len(crowd)} crowd memories"
                assert all(h["workspace"] == "crowd" for h in crowd)
                assert {x for h in crowd for x in MARKER.findall(h["content"])} == (
                    set(team.values()) if member else set())
            except Exception as exc:  # noqa: BLE001 - one line per user, then fail once
                failures.append(f"{name} ({'member' if member else 'not a member'}): {type(exc).__name__}: {exc}")
            finally:
                if waiting:
                    arrive()

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for name, token, member in users:
                    tg.start_soon(user, name, token, member)
        print(f"\n[{backend(db_target)}] {len(users)} users, {most_open} sessions open at once, "
              f"{time.monotonic() - started:.1f}s")
        assert not failures, f"{len(failures)} users saw something wrong:\n" + "\n".join(failures)
        assert most_open == len(users)
    finally:
        served.stop()
