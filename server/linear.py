"""Linear's GraphQL API: a client that honours rate limits and retries, the operations the sync sends, and
webhook signature checks. The API key goes only into the Authorization header: never into a message or log."""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from server.errors import StackMemoryError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

WEBHOOK_TOLERANCE_MS = 60_000  # a webhook signed longer ago than this is refused as stale (or replayed)
ISSUE_FIELDS = ("id identifier url title description priority updatedAt team { id } state { id name type } "
                "assignee { id name displayName email } labels(first: 50) { nodes { name } }")
ISSUES = ("query StackMemoryIssues($filter: IssueFilter, $first: Int, $after: String) {"
          " issues(filter: $filter, first: $first, after: $after, orderBy: updatedAt) {"
          f" nodes {{ {ISSUE_FIELDS} }} pageInfo {{ hasNextPage endCursor }} }} }}")
ISSUE = f"query StackMemoryIssue($id: String!) {{ issue(id: $id) {{ {ISSUE_FIELDS} }} }}"
CREATE = ("mutation StackMemoryCreate($input: IssueCreateInput!) {"
          f" issueCreate(input: $input) {{ success issue {{ {ISSUE_FIELDS} }} }} }}")
UPDATE = ("mutation StackMemoryUpdate($id: String!, $input: IssueUpdateInput!) {"
          f" issueUpdate(id: $id, input: $input) {{ success issue {{ {ISSUE_FIELDS} }} }} }}")
TEAMS = ("query StackMemoryTeams($filter: TeamFilter) {"
         " teams(filter: $filter, first: 2) { nodes { id key name } } }")
STATES = ("query StackMemoryStates($filter: WorkflowStateFilter, $first: Int, $after: String) {"
          " workflowStates(filter: $filter, first: $first, after: $after) {"
          " nodes { id name type position } pageInfo { hasNextPage endCursor } } }")
USERS = ("query StackMemoryUsers($first: Int, $after: String) { users(first: $first, after: $after) {"
         " nodes { id name displayName email } pageInfo { hasNextPage endCursor } } }")
LABELS = ("query StackMemoryLabels($filter: IssueLabelFilter, $first: Int, $after: String) {"
          " issueLabels(filter: $filter, first: $first, after: $after) {"
          " nodes { id name } pageInfo { hasNextPage endCursor } } }")
CREATE_LABEL = ("mutation StackMemoryLabel($input: IssueLabelCreateInput!) {"
                " issueLabelCreate(input: $input) { success issueLabel { id name } } }")


class LinearError(StackMemoryError):
    """Linear refused a request (the message says why); retrying the same request will not help."""


class LinearAuthError(LinearError):
    """Linear refused the API key."""


class LinearUnavailable(LinearError):
    """Linear could not be reached or kept asking us to wait; a later sync will try again."""


class _TooComplex(LinearError):
    """The query's complexity is over Linear's limit: ask for smaller pages."""


@dataclass(frozen=True)
class WorkflowState:
    id: str
    name: str
    type: str
    position: float = 0.0


@dataclass(frozen=True)
class LinearUser:
    id: str
    name: str
    display_name: str
    email: str


@dataclass(frozen=True)
class RemoteIssue:
    """An issue as the sync needs it, from a query or from a webhook's payload."""

    id: str
    identifier: str | None
    url: str | None
    title: str
    description: str
    priority: int
    state: WorkflowState | None
    assignee: LinearUser | None
    labels: tuple[str, ...]
    updated_at: datetime
    updated_raw: str
    team_id: str | None

    def raw(self) -> dict[str, Any]:
        """Linear's side of the synced fields, compared with the last sync's to tell what changed there."""
        return {"title": self.title, "description": self.description, "priority": self.priority,
                "status": self.state.id if self.state else None,
                "assignee": self.assignee.id if self.assignee else None, "labels": sorted(self.labels)}

    @classmethod
    def of(cls, node: dict[str, Any]) -> RemoteIssue:
        """From a GraphQL Issue node, or a webhook's IssueWebhookPayload (labels as a list)."""
        state, who = node.get("state"), node.get("assignee")
        labels = node.get("labels") or []
        names = labels.get("nodes", []) if isinstance(labels, dict) else labels
        team = node.get("team") or {}
        return cls(id=node["id"], identifier=node.get("identifier"), url=node.get("url"), title=node.get("title") or "",
                   description=node.get("description") or "", priority=int(node.get("priority") or 0),
                   state=WorkflowState(state["id"], state.get("name", ""), state.get("type", "")) if state else None,
                   assignee=LinearUser(who["id"], who.get("name", ""), who.get("displayName", ""),
                                       who.get("email", "")) if who else None,
                   labels=tuple(sorted(n["name"] for n in names)), updated_at=parse_time(node["updatedAt"]),
                   updated_raw=node["updatedAt"], team_id=team.get("id") or node.get("teamId"))


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


class LinearClient:
    """One API key's client. Network errors and 5xx answers are retried with exponential backoff; 429s and
    RATELIMITED errors wait as long as Linear says (Retry-After, or the reset time), up to max_wait."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, attempts: int = 6, backoff: float = 1.0,
                 max_wait: float = 120.0, page_size: int = 100,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        self.url = url
        self._key = api_key
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.max_wait = max_wait
        self.page_size = page_size
        self.sleep = sleep
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"LinearClient({self.url!r})"

    async def __aenter__(self) -> Self:
        import httpx

        self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), headers={
            "Authorization": self._key if self._key.startswith("lin_api_") else f"Bearer {self._key}",
            "Content-Type": "application/json", "User-Agent": "stackmemory"})
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ---- operations -----------------------------------------------------------------------------------

    async def team(self, key_or_id: str) -> tuple[str, str, str]:
        """(id, key, name) of the team with this key (e.g. ENG) or id."""
        data = await self.execute(TEAMS, {"filter": {"or": [{"key": {"eq": key_or_id}}, {"id": {"eq": key_or_id}}]}})
        nodes = data["teams"]["nodes"]
        if not nodes:
            raise LinearError(f"Linear has no team {key_or_id!r} that this API key can see; give the team's key "
                              "(the prefix of its issue identifiers, e.g. ENG)")
        return nodes[0]["id"], nodes[0]["key"], nodes[0]["name"]

    async def states(self, team_id: str) -> list[WorkflowState]:
        nodes = await self._all(STATES, "workflowStates", {"filter": {"team": {"id": {"eq": team_id}}}})
        return sorted((WorkflowState(n["id"], n["name"], n["type"], float(n.get("position") or 0)) for n in nodes),
                      key=lambda s: s.position)

    async def users(self) -> list[LinearUser]:
        return [LinearUser(n["id"], n["name"], n["displayName"], n["email"]) for n in await self._all(USERS, "users", {})]

    async def labels(self, team_id: str) -> dict[str, str]:
        """{name: id} of the team's labels and the workspace-wide ones."""
        scope = {"or": [{"team": {"id": {"eq": team_id}}}, {"team": {"null": True}}]}
        return {n["name"]: n["id"] for n in await self._all(LABELS, "issueLabels", {"filter": scope})}

    async def create_label(self, team_id: str, name: str) -> str:
        data = await self.execute(CREATE_LABEL, {"input": {"name": name, "teamId": team_id}})
        return str(data["issueLabelCreate"]["issueLabel"]["id"])

    async def issues(self, team_id: str, since: str | None) -> AsyncIterator[list[RemoteIssue]]:
        """The team's issues updated at or after `since` (all of them without it), a page at a time."""
        where: dict[str, Any] = {"team": {"id": {"eq": team_id}}}
        if since:
            where["updatedAt"] = {"gte": since}
        async for nodes in self._pages(ISSUES, "issues", {"filter": where}):
            yield [RemoteIssue.of(n) for n in nodes]

    async def issue(self, issue_id: str) -> RemoteIssue | None:
        try:
            data = await self.execute(ISSUE, {"id": issue_id})
        except LinearError as exc:
            if "not found" in str(exc).lower():
                return None
            raise
        return RemoteIssue.of(data["issue"]) if data.get("issue") else None

    async def create_issue(self, fields: dict[str, Any]) -> RemoteIssue:
        data = await self.execute(CREATE, {"input": fields})
        return self._issue(data["issueCreate"], "create")

    async def update_issue(self, issue_id: str, fields: dict[str, Any]) -> RemoteIssue:
        data = await self.execute(UPDATE, {"id": issue_id, "input": fields})
        return self._issue(data["issueUpdate"], "update")

    @staticmethod
    def _issue(payload: dict[str, Any] | None, verb: str) -> RemoteIssue:
        if not payload or not payload.get("success") or not payload.get("issue"):
            raise LinearError(f"Linear did not {verb} the issue (success: false)")
        return RemoteIssue.of(payload["issue"])

    async def _all(self, query: str, field: str, variables: dict[str, Any]) -> list[dict[str, Any]]:
        return [node async for nodes in self._pages(query, field, variables) for node in nodes]

    async def _pages(self, query: str, field: str, variables: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        """A connection's nodes, a page at a time; a page Linear finds too complex is asked for again at half
        the size."""
        after: str | None = None
        size = self.page_size
        while True:
            try:
                page = (await self.execute(query, {**variables, "first": size, "after": after}))[field]
            except _TooComplex:
                if size <= 1:
                    raise
                size = max(1, size // 2)
                log.info("Linear found a %s query too complex; asking for pages of %d", field, size)
                continue
            yield page["nodes"]
            if not page["pageInfo"]["hasNextPage"]:
                return
            after = page["pageInfo"]["endCursor"]

    # ---- transport ------------------------------------------------------------------------------------

    async def execute(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """POST one operation; its `data`, after retries. Raises a LinearError saying what went wrong."""
        import httpx

        if self._http is None:
            raise RuntimeError("use LinearClient in `async with`")
        failure = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self._http.post(self.url, json={"query": query, "variables": variables})
            except httpx.TimeoutException:
                failure, wait = f"no answer within {self.timeout:g}s", self._backoff(attempt)
            except httpx.TransportError as exc:
                failure, wait = f"network error ({type(exc).__name__})", self._backoff(attempt)
            else:
                answer = self._answer(response)
                if isinstance(answer, dict):
                    return answer
                failure, wait = answer[0], answer[1] if answer[1] is not None else self._backoff(attempt)
            if attempt == self.attempts:
                break
            if wait > self.max_wait:
                raise LinearUnavailable(f"Linear asks to wait {wait:.0f}s ({failure}); the next sync tries again")
            log.info("Linear request failed (%s); retrying in %.1fs (attempt %d/%d)", failure, wait, attempt,
                     self.attempts)
            await self.sleep(wait)
        raise LinearUnavailable(f"Linear did not answer after {self.attempts} attempts: {failure}")

    def _answer(self, response: httpx.Response) -> dict[str, Any] | tuple[str, float | None]:
        """The data, or (why, seconds to wait or None for backoff) when the request should be retried."""
        status = response.status_code
        if status == 429:
            return "rate limited (HTTP 429)", _retry_after(response)
        if status >= 500:
            return f"Linear answered HTTP {status}", None
        if status in (401, 403):
            raise LinearAuthError(f"Linear refused the API key (HTTP {status}); check it, or connect again "
                                  "with `stackmemory linear connect`")
        try:
            body = response.json()
        except ValueError:
            raise LinearError(f"Linear answered HTTP {status} with something other than JSON") from None
        errors = body.get("errors") if isinstance(body, dict) else None
        if not errors:
            if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
                raise LinearError(f"Linear answered HTTP {status} without data")
            return dict(body["data"])
        first = errors[0] if isinstance(errors[0], dict) else {}
        message = str(first.get("message", "unknown error"))[:300]
        code = str((first.get("extensions") or {}).get("code", "")).upper()
        if code == "RATELIMITED" or "rate limit" in message.lower():
            return f"rate limited ({message})", _retry_after(response)
        if "complex" in message.lower() or "COMPLEXITY" in code:
            raise _TooComplex(f"Linear found the query too complex: {message}")
        if code in ("AUTHENTICATION_ERROR", "FORBIDDEN") or "authenticat" in message.lower():
            raise LinearAuthError(f"Linear refused the API key ({message}); check it, or connect again with "
                                  "`stackmemory linear connect`")
        raise LinearError(f"Linear refused the request: {message}")

    def _backoff(self, attempt: int) -> float:
        ceiling = self.backoff * 2 ** (attempt - 1)
        return random.uniform(ceiling / 2, ceiling)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds Linear asks us to wait: Retry-After (seconds or a date), else its rate-limit reset time."""
    value = response.headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    for header in ("x-ratelimit-requests-reset", "x-ratelimit-complexity-reset"):
        reset = response.headers.get(header)
        if reset and reset.isdigit():  # epoch milliseconds
            return max(0.0, int(reset) / 1000 - time.time())
    return None


def signature_valid(body: bytes, signature: str | None, secret: str) -> bool:
    """Linear-Signature is the hex HMAC-SHA256 of the raw body, keyed with the webhook's secret."""
    if not signature or not secret:
        return False
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


def timestamp_fresh(timestamp_ms: object, now: datetime) -> bool:
    """A webhook's webhookTimestamp (milliseconds) within WEBHOOK_TOLERANCE_MS of now."""
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int | float):
        return False
    return abs(now.timestamp() * 1000 - float(timestamp_ms)) <= WEBHOOK_TOLERANCE_MS
