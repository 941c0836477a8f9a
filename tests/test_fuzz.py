"""Hostile input, fuzzed with Hypothesis: every tool gets random and hostile argument sets (wrong types,
huge strings, deep JSON, NUL bytes, lone surrogates, SQL and FTS syntax, path-like ids) built from its own
input schema. Every answer must be a correct result or a tool error saying what was wrong: never a
JSON-RPC error, never a bare "Error executing tool X" (the SDK's word for a crash), never a traceback or
an exception's class name, and the server must keep serving. A smaller slice goes over real HTTP.

Derandomized (the same cases on every run); STACKMEMORY_FUZZ_EXAMPLES sets the cases per tool."""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.app import tool_names
from tests import figures
from tests.test_transports import Served

pytestmark = pytest.mark.anyio

EXAMPLES = int(os.environ.get("STACKMEMORY_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
UUID = "01936f2e-7c3a-7d4e-9b1a-2f3c4d5e6f70"
CRASH = re.compile(r"Traceback|File \"|\b(?:TypeError|KeyError|AttributeError|IndexError|RecursionError|"
                   r"AssertionError|RuntimeError|UnboundLocalError|NameError|ZeroDivisionError|OverflowError|"
                   r"UnicodeEncodeError|UnicodeDecodeError|JSONDecodeError|OperationalError|ProgrammingError|"
                   r"DataError|InterfaceError|IntegrityError|sqlite3|psycopg)\b")

# ---- hostile values -----------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "\ufeff", "\u202e", "🚀" * 10, "é" * 40_000, "x" * 70_000,
    "a " * 50_000, "' OR 1=1 --", "'; DROP TABLE memories; --", "\" OR \"\"=\"", "NEAR(a b)", "\"unterminated",
    "*", "a*", "-x", "^start", "content:foo", "tags:bar", "AND OR NOT", "(((", ")", "{}", "[]", "%", "_", "\\",
    "../../etc/passwd", "..\\..\\windows\\system32", "/dev/null", "C:\\Windows\\", "%2e%2e%2f", "file:///etc/shadow",
    UUID, UUID.upper(), UUID + "/../x", " " + UUID, "01936f2e7c3a7d4e9b1a2f3c4d5e6f70", "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff", "all", "*", "~", "~local", "personal", "NaN", "-1", "1e309",
    "<script>alert(1)</script>", "${jndi:ldap://x}", "{{7*7}}", "\r\n\r\nHTTP/1.1 200 OK", "\t\n\v\f\r",
]


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


# Nesting stops at 240: the SDK's client cannot send deeper JSON (its serializer's limit is about 250);
# deeper bodies are sent raw over HTTP below.
HOSTILE_ANY = [None, True, False, 0, -1, 2**63, -(2**63) - 1, 10**30, 1.5, float("inf"), float("nan"), [], {},
               [None], {"": None}, {"\x00": "\x00"}, deep(30), deep(240), ["x"] * 5000,
               {f"k{i}": i for i in range(3000)}]

text = st.one_of(st.text(max_size=200), st.sampled_from(HOSTILE_TEXT),
                 st.text(alphabet=st.characters(codec=None, categories=None), max_size=50))
# Object keys without lone surrogates: the SDK's client cannot serialize those (values it can).
keys = st.one_of(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30),
                 st.sampled_from([t for t in HOSTILE_TEXT if len(t) < 100 and "\ud800" not in t and "\udfff" not in t]))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text)
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                          st.dictionaries(keys, inner, max_size=5)), max_leaves=20)
anything = st.one_of(json_value, st.sampled_from(HOSTILE_ANY))


def for_schema(prop: dict[str, Any], ids: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A value shaped like the property most of the time (so the tool body runs), hostile otherwise."""
    types = {s.get("type") for s in prop.get("anyOf", [prop])} - {"null", None}
    shaped: list[st.SearchStrategy[Any]] = []
    for option in prop.get("anyOf", [prop]):
        if "enum" in option:
            shaped.append(st.sampled_from(option["enum"]))
    if "string" in types:
        shaped += [text, ids] if prop.get("format") != "date-time" else [
            st.datetimes().map(lambda d: d.isoformat()), text]
    if "integer" in types:
        shaped.append(st.one_of(st.integers(-5, 1100), st.integers()))
    if "boolean" in types:
        shaped.append(st.booleans())
    if "array" in types:
        shaped.append(st.lists(st.one_of(text, anything), max_size=40))
    if "object" in types:
        shaped.append(st.dictionaries(keys, json_value, max_size=8))
    return st.one_of(*shaped, anything) if shaped else anything


@st.composite
def arguments(draw: st.DrawFn, schema: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    id_strategy = st.sampled_from(ids)
    args: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if draw(st.integers(0, 3)) == 0 and name not in schema.get("required", []):
            continue
        if draw(st.integers(0, 20)) == 0:
            continue  # sometimes even a required one is left out
        args[name] = draw(for_schema(prop, id_strategy))
    if draw(st.integers(0, 10)) == 0:
        args[draw(keys)] = draw(anything)  # an argument nobody asked for
    return args


# ---- the judge ---------------------------------------------------------------------------------------------

def judge(tool: str, result: Any) -> str | None:
    """None when the answer is acceptable, else what is wrong with it."""
    texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
    if not result.is_error:
        return None if isinstance(result.structured_content, dict) else "a result without structured content"
    message = " ".join(texts)
    if message.strip() in (f"Error executing tool {tool}", f"Error executing tool {tool}:"):
        return "internal error (the SDK's message for a crash)"
    if CRASH.search(message):
        return f"looks like an exception leaked: {message[:300]!r}"
    if not message.strip():
        return "an empty error"
    return None


def _schemas() -> dict[str, dict[str, Any]]:
    """Every tool's input schema, read from the server object (no database needed to list tools)."""
    import anyio

    from server.app import Runtime, build_server
    from server.config import Settings

    settings_ = Settings.load(env={"STACKMEMORY_EMBEDDINGS": "none", "STACKMEMORY_PROJECT": "fuzz"},
                              db="/nonexistent/fuzz.db")
    tools = anyio.run(build_server(Runtime(settings_)).list_tools)
    return {t.name: t.input_schema for t in tools}


SCHEMAS = _schemas()
SEEDED: dict[int, list[str]] = {}  # client -> ids of memories stored for the fuzzer to aim at
# Arguments are drawn before the test's coroutine runs (a draw inside it that overruns would stop
# AnyIO's test runner), so ids are placeholders, swapped for the seeded memories' real ids at call time.
PLACEHOLDERS = ["<seeded id 0>", "<seeded id 1>", "<seeded id 2>"]


async def real_ids(client: Any, args: dict[str, Any]) -> dict[str, Any]:
    if id(client) not in SEEDED:
        SEEDED[id(client)] = [(await client.call_tool("store_memory", {
            "content": f"fuzz seed memory {i}", "tags": ["seed"]})).structured_content["id"] for i in range(3)]
    ids = dict(zip(PLACEHOLDERS, SEEDED[id(client)], strict=True))
    return {k: ids.get(v, v) if isinstance(v, str) else v for k, v in args.items()}


async def call_and_judge(client: Any, tool: str, args: dict[str, Any], counter: str) -> None:
    args = await real_ids(client, args)
    try:
        result = await client.call_tool(tool, args)
    except Exception as exc:  # a JSON-RPC error or a dead server: both are failures
        raise AssertionError(f"{tool} raised {type(exc).__name__}: {str(exc)[:300]} for {summary(args)}") from exc
    figures.add("fuzz_cases", counter, 1)
    wrong = judge(tool, result)
    assert wrong is None, f"{tool}: {wrong} for {summary(args)}"


def fuzz_test(tool: str) -> Any:
    @FUZZ
    @given(args=arguments(SCHEMAS[tool], PLACEHOLDERS))
    async def test(client: Any, db_target: str, args: dict[str, Any]) -> None:
        backend = "postgres" if db_target.startswith("postgres") else "sqlite"
        await call_and_judge(client, tool, args, f"{backend}:{tool}")
        assert not (await client.call_tool("memory_status", {})).is_error, "the server stopped serving"

    test.__name__ = f"test_no_argument_set_crashes_{tool}"
    return test


for _tool in tool_names():  # one test per tool, each on both backends
    globals()[f"test_no_argument_set_crashes_{_tool}"] = fuzz_test(_tool)


def summary(args: dict[str, Any]) -> str:
    return repr({k: (v[:40] + "…" if isinstance(v, str) and len(v) > 40 else v)
                 for k, v in args.items()})[:300]


# ---- over HTTP -----------------------------------------------------------------------------------------

@pytest.fixture
def served_http(tmp_path: Any) -> Iterator[Served]:
    s = Served(str(tmp_path / "fuzz.db"), "http", STACKMEMORY_RATE_LIMIT="0")
    try:
        yield s
    finally:
        s.stop()


HTTP_TOOLS = ("store_memory", "search_memory", "get_memory", "update_memory", "list_memories", "get_context")


@pytest.fixture
async def http_client(served_http: Served) -> Any:
    async with served_http.client() as client:
        yield client


@settings(FUZZ, max_examples=max(1, EXAMPLES * 2))
@given(case=st.sampled_from(HTTP_TOOLS).flatmap(lambda tool: st.tuples(st.just(tool),
                                                                      arguments(SCHEMAS[tool], PLACEHOLDERS))))
async def test_hostile_arguments_over_http_get_tool_errors_not_crashes(served_http: Served, http_client: Any,
                                                                       case: tuple[str, dict[str, Any]]) -> None:
    tool, args = case
    await call_and_judge(http_client, tool, wire(args), "http")
    assert served_http.proc.poll() is None


def wire(value: Any) -> Any:
    """What the SDK's HTTP client can send: JSON has no NaN or infinities, and the client cannot encode lone
    surrogates (the raw-request test below sends those as JSON escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [wire(v) for v in value]
    if isinstance(value, dict):
        return {wire(k): wire(v) for k, v in value.items()}
    return value


def raw(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def session(url: str, token: str | None) -> dict[str, str]:
    """Headers of an initialized Streamable HTTP session, made by hand."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    request = urllib.request.Request(url, method="POST", headers=headers, data=json.dumps({
        "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        response.read()
    raw(url, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(), headers)
    return headers


def nested(body: bytes, depth: int) -> bytes:
    """The body with its "<deep>" value replaced by objects nested `depth` deep (too deep for json.dumps)."""
    return body.replace(b'"<deep>"', b'{"d": ' * depth + b"1" + b"}" * depth)


def call(name: str, arguments: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}).encode()


async def test_malformed_http_requests_get_clear_refusals_and_the_server_keeps_serving(served_http: Served) -> None:
    url = served_http.base + "/mcp"
    headers = session(url, served_http.token)
    refused = {  # each is refused with a 4xx, a JSON-RPC error or a tool error; never a 5xx or a traceback
        "not json": b"{not json",
        "invalid utf-8": b'{"jsonrpc": "2.0", "id": 1, "method": "\xff\xfe"}',
        "deeply nested": nested(b'"<deep>"', 5000),
        "a bare string": b'"hello"',
        "an empty batch": b"[]",
        "a batch of junk": b"[1, 2, 3]",
        "no method": b'{"jsonrpc": "2.0", "id": 1}',
        "null params": b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": null}',
        "arguments not an object": call("store_memory", ["x"]),
        "an unknown tool": call("drop_database", {}),
        "empty body": b"",
        "NUL bytes": b'{"jsonrpc": "2.0", "id": 1, "method": "\x00"}',
        "deep metadata": nested(call("store_memory", {"content": "x", "metadata": "<deep>"}), 900),
        "very deep metadata": nested(call("store_memory", {"content": "x", "metadata": "<deep>"}), 20000),
        "lone surrogates": call("store_memory", {"content": "a\ud800b", "tags": ["\udfff"],
                                                 "metadata": {"\ud800": "\udc00x"}}),
        "a 300 KB query": call("search_memory", {"query": "word " * 60_000}),
    }
    for label, body in refused.items():
        status, answer = raw(url, body, headers)
        text = answer.decode(errors="replace")
        assert status < 500, (label, status, text[:200])
        assert not CRASH.search(text), (label, text[:300])
        answered = label == "a 300 KB query"  # a long query is plain text: searched, not refused
        assert answered or status >= 400 or '"error"' in text or '"isError":true' in text, (label, status, text[:300])
    wrong_type = raw(url, call("memory_status", {}), {**headers, "Content-Type": "text/plain"})
    assert 400 <= wrong_type[0] < 500
    figures.add("fuzz_cases", "http_malformed", len(refused) + 1)
    async with served_http.client() as client:
        assert not (await client.call_tool("memory_status", {})).is_error
    served_http.stop()
    assert "Traceback" not in served_http.stderr()
