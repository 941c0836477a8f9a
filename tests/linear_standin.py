"""A local stand-in for Linear's GraphQL API: every operation it receives is validated against Linear's
published schema (../shared/linear/schema.graphql) with graphql-core, then executed against issues kept in
memory. It answers like Linear (pagination, updatedAt filters, client-chosen ids, errors with extension
codes) and can inject 429s, 500s, timeouts, rate-limit and complexity errors, or stop mid-operation."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parent.parent.parent / "shared" / "linear" / "schema.graphql"
API_KEY = "lin_api_standin0123456789abcdef"


@cache
def schema() -> Any:
    from graphql import build_schema

    return build_schema(SCHEMA.read_text(encoding="utf-8"))


@dataclass
class Fault:
    kind: str  # "429", "500", "timeout", "complexity", "ratelimited"
    op: str | None = None  # only for this operation name
    retry_after: float = 1.0
    seconds: float = 0.0


@dataclass
class Call:
    op: str | None
    variables: dict[str, Any]
    fault: str | None = None  # the fault injected instead of an answer


@dataclass
class StandIn:
    """Linear for one organisation with one team ("ENG"), its workflow states, two users and some labels."""

    api_key: str = API_KEY
    max_page: int = 250  # a connection page larger than this is refused as too complex
    issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    creates: int = 0
    on_create: Callable[[int], None] | None = None  # called with the count after a create, before the answer
    hold: threading.Event | None = None  # when set up, StackMemoryIssues waits for it (and `held` is set)
    held: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.team = {"id": str(uuid.uuid4()), "key": "ENG", "name": "Engineering"}
        self.states = [self._state(n, t, p) for p, (n, t) in enumerate(
            [("Backlog", "backlog"), ("Todo", "unstarted"), ("In Progress", "started"), ("Blocked", "started"),
             ("Done", "completed"), ("Canceled", "canceled")])]
        self.users = [{"id": str(uuid.uuid4()), "name": n, "displayName": n.split()[0].lower(), "email": e}
                      for n, e in (("Ada Lovelace", "ada@example.com"), ("Alan Turing", "alan@example.com"))]
        self.labels = [{"id": str(uuid.uuid4()), "name": n, "team": self.team["id"]} for n in ("bug", "backend")]
        self._clock = datetime.now(UTC) - timedelta(days=1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # ---- running ----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/graphql"

    def start(self) -> StandIn:
        schema()  # built once per test session, before the first request needs it
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, answer = standin.handle(dict(self.headers.items()), body)
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the client went away (a timeout, or a killed sync)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        from graphql import GraphQLError, execute, parse, validate

        request = json.loads(body)
        query, variables = request.get("query", ""), request.get("variables") or {}
        try:
            document = parse(query)
        except GraphQLError as exc:
            return self._invalid(query, [exc])
        op = next((d.name.value for d in document.definitions if getattr(d, "name", None)), None)
        call = Call(op, variables)
        with self._lock:
            self.calls.append(call)
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if auth not in (self.api_key, f"Bearer {self.api_key}"):
            call.fault = "authentication"
            return _errors(400, "Authentication required, not authenticated", "AUTHENTICATION_ERROR")
        fault = self._fault(op)
        if fault is not None:
            call.fault = fault.kind
            answer = self._inject(fault)
            if answer is not None:
                return answer
        errors = validate(schema(), document)
        if errors:
            return self._invalid(query, errors)
        if op == "StackMemoryIssues" and self.hold is not None:
            self.held.set()
            self.hold.wait(30)
        with self._lock:
            result = execute(schema(), document, root_value=self._root(), variable_values=variables,
                             operation_name=op)
        if result.errors and any(not e.path for e in result.errors):  # variables that do not fit the schema
            return self._invalid(query, result.errors)
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [e.formatted for e in result.errors]
        return 200, {}, json.dumps(payload).encode()

    def _invalid(self, query: str, errors: Any) -> tuple[int, dict[str, str], bytes]:
        messages = [getattr(e, "message", str(e)) for e in errors]
        self.invalid.append(f"{' '.join(query.split())[:200]}: {messages}")
        return 400, {}, json.dumps({"errors": [{"message": m, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}
                                               for m in messages]}).encode()

    def _fault(self, op: str | None) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.op is None or fault.op == op:
                    return self.faults.pop(i)
        return None

    def _inject(self, fault: Fault) -> tuple[int, dict[str, str], bytes] | None:
        if fault.kind == "429":
            return 429, {"Retry-After": f"{fault.retry_after:g}"}, b'{"error":"Too Many Requests"}'
        if fault.kind == "500":
            return 500, {}, b'{"error":"Internal Server Error"}'
        if fault.kind == "ratelimited":
            reset = str(int((time.time() + fault.retry_after) * 1000))
            return _errors(400, "Rate limit exceeded", "RATELIMITED", {"X-RateLimit-Requests-Reset": reset})
        if fault.kind == "complexity":
            return _errors(400, "Query too complex: complexity 12500 exceeds the maximum of 10000", "INVALID_INPUT")
        time.sleep(fault.seconds)  # "timeout": answer, but too late
        return None

    # ---- Linear's data ----------------------------------------------------------------------------------

    def _state(self, name: str, kind: str, position: int) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "name": name, "type": kind, "position": float(position), "color": "#000"}

    def tick(self) -> str:
        """The next updatedAt: strictly later than every earlier one, in Linear's format."""
        with self._lock:
            self._clock = max(self._clock + timedelta(milliseconds=1), datetime.now(UTC))
            return self._clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def state(self, name: str) -> dict[str, Any]:
        return next(s for s in self.states if s["name"] == name)

    def add_issue(self, title: str, *, state: str = "Todo", priority: int = 0, description: str = "",
                  labels: tuple[str, ...] = (), assignee: str | None = None) -> dict[str, Any]:
        with self._lock:
            number = len(self.issues) + 1
            issue = {"id": str(uuid.uuid4()), "identifier": f"ENG-{number}", "title": title,
                     "url": f"https://linear.app/acme/issue/ENG-{number}", "description": description,
                     "priority": float(priority), "state": self.state(state), "team": {"id": self.team["id"]},
                     "assignee": next((u for u in self.users if u["email"] == assignee), None),
                     "labelIds": [lb["id"] for lb in self.labels if lb["name"] in labels],
                     "createdAt": self.tick(), "updatedAt": self.tick()}
            self.issues[issue["id"]] = issue
            return issue

    def edit(self, issue_id: str, **changes: Any) -> dict[str, Any]:
        """What a person does in Linear's app: the issue changes and its updatedAt moves on."""
        with self._lock:
            issue = self.issues[issue_id]
            if "state" in changes:
                changes["state"] = self.state(changes["state"])
            issue.update(changes, updatedAt=self.tick())
            return issue

    def by_title(self, title: str) -> list[dict[str, Any]]:
        return [i for i in self.issues.values() if i["title"] == title]

    def node(self, issue: dict[str, Any]) -> dict[str, Any]:
        labels = [{"id": lb["id"], "name": lb["name"]} for lb in self.labels if lb["id"] in issue["labelIds"]]
        return {**issue, "labels": {"nodes": labels}}

    def webhook(self, issue: dict[str, Any], action: str = "update", *, at: float | None = None) -> bytes:
        """A Linear webhook body (EntityWebhookPayload with an IssueWebhookPayload) for this issue."""
        labels = [{"id": lb["id"], "name": lb["name"], "color": "#f00"} for lb in self.labels
                  if lb["id"] in issue["labelIds"]]
        data = {**{k: issue[k] for k in ("id", "identifier", "title", "description", "priority", "url",
                                         "createdAt", "updatedAt")},
                "state": {k: issue["state"][k] for k in ("id", "name", "type", "color")},
                "stateId": issue["state"]["id"], "teamId": self.team["id"], "labels": labels,
                "labelIds": issue["labelIds"], "assignee": issue["assignee"],
                "assigneeId": issue["assignee"]["id"] if issue["assignee"] else None}
        event = {"action": action, "type": "Issue", "data": data, "url": issue["url"],
                 "createdAt": issue["updatedAt"], "organizationId": str(uuid.uuid4()),
                 "webhookId": str(uuid.uuid4()),
                 "webhookTimestamp": int((time.time() if at is None else at) * 1000)}
        return json.dumps(event).encode()

    # ---- resolvers ----------------------------------------------------------------------------------------

    def _root(self) -> dict[str, Any]:
        return {"issues": self._issues, "issue": self._issue, "teams": self._teams,
                "workflowStates": self._page_of(lambda a: self.states), "users": self._page_of(lambda a: self.users),
                "issueLabels": self._page_of(lambda a: [{"id": lb["id"], "name": lb["name"]} for lb in self.labels]),
                "issueCreate": self._create, "issueUpdate": self._update, "issueLabelCreate": self._label}

    def _page(self, nodes: list[dict[str, Any]], first: int | None, after: str | None) -> dict[str, Any]:
        from graphql import GraphQLError

        size = 50 if first is None else first
        if size > self.max_page:
            raise GraphQLError(f"Query too complex: a page of {size} exceeds the maximum complexity",
                               extensions={"code": "INVALID_INPUT"})
        start = int(after) if after else 0
        chunk = nodes[start:start + size]
        more = start + size < len(nodes)
        return {"nodes": chunk, "edges": [], "pageInfo": {"hasNextPage": more, "hasPreviousPage": start > 0,
                                                          "startCursor": str(start),
                                                          "endCursor": str(start + len(chunk))}}

    def _page_of(self, nodes: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> Callable[..., Any]:
        return lambda info, first=None, after=None, **a: self._page(nodes(a), first, after)

    def _issues(self, info: Any, filter: dict[str, Any] | None = None, first: int | None = None,
                after: str | None = None, **_: Any) -> dict[str, Any]:
        where = filter or {}
        team = ((where.get("team") or {}).get("id") or {}).get("eq")
        since = where.get("updatedAt") or {}
        found = [i for i in self.issues.values() if (team is None or i["team"]["id"] == team)
                 and ("gte" not in since or i["updatedAt"] >= since["gte"])
                 and ("gt" not in since or i["updatedAt"] > since["gt"])]
        found.sort(key=lambda i: i["updatedAt"], reverse=True)
        return self._page([self.node(i) for i in found], first, after)

    def _issue(self, info: Any, id: str) -> dict[str, Any]:
        from graphql import GraphQLError

        issue = self.issues.get(id) or next((i for i in self.issues.values() if i["identifier"] == id), None)
        if issue is None:
            raise GraphQLError("Entity not found: Issue", extensions={"code": "INVALID_INPUT"})
        return self.node(issue)

    def _teams(self, info: Any, filter: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
        wanted = {str(v.get("eq")) for part in (filter or {}).get("or", [filter or {}])
                  for v in part.values() if isinstance(v, dict)}
        teams = [self.team] if not wanted or wanted & {self.team["key"], self.team["id"]} else []
        return self._page(teams, None, None)

    def _apply(self, issue: dict[str, Any], data: dict[str, Any]) -> None:
        from graphql import GraphQLError

        for key in ("title", "description"):
            if key in data:
                issue[key] = data[key]
        if "priority" in data:
            issue["priority"] = float(data["priority"])
        if "stateId" in data:
            issue["state"] = next((s for s in self.states if s["id"] == data["stateId"]), None)
            if issue["state"] is None:
                raise GraphQLError("Entity not found: WorkflowState", extensions={"code": "INVALID_INPUT"})
        if "assigneeId" in data:
            issue["assignee"] = next((u for u in self.users if u["id"] == data["assigneeId"]), None)
        if "labelIds" in data:
            known = {lb["id"] for lb in self.labels}
            if not set(data["labelIds"]) <= known:
                raise GraphQLError("Entity not found: IssueLabel", extensions={"code": "INVALID_INPUT"})
            issue["labelIds"] = list(data["labelIds"])
        issue["updatedAt"] = self.tick()

    def _create(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        from graphql import GraphQLError

        if input.get("id") in self.issues:
            raise GraphQLError("Entity already exists", extensions={"code": "INVALID_INPUT"})
        if input["teamId"] != self.team["id"]:
            raise GraphQLError("Entity not found: Team", extensions={"code": "INVALID_INPUT"})
        issue = self.add_issue(input.get("title") or "Untitled")
        del self.issues[issue["id"]]
        issue["id"] = input.get("id") or issue["id"]
        self.issues[issue["id"]] = issue
        self._apply(issue, input)
        self.creates += 1
        if self.on_create is not None:
            self.on_create(self.creates)
        return {"success": True, "lastSyncId": float(len(self.calls)), "issue": self.node(issue)}

    def _update(self, info: Any, id: str, input: dict[str, Any]) -> dict[str, Any]:
        issue = self._issue(info, id)
        self._apply(self.issues[issue["id"]], input)
        return {"success": True, "lastSyncId": float(len(self.calls)), "issue": self.node(self.issues[issue["id"]])}

    def _label(self, info: Any, input: dict[str, Any], **_: Any) -> dict[str, Any]:
        label = {"id": str(uuid.uuid4()), "name": input["name"], "team": input.get("teamId")}
        self.labels.append(label)
        return {"success": True, "lastSyncId": 0.0, "issueLabel": {"id": label["id"], "name": label["name"]}}


def _errors(status: int, message: str, code: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    return status, headers or {}, json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
