"""Settings: read once from flags and the environment, nowhere else."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from server.errors import ConfigError

Backend = Literal["sqlite", "postgres"]
DEFAULT_DB = Path("~/.stackmemory/stackmemory.db")
DEFAULT_LINEAR_URL = "https://api.linear.app/graphql"
# Memories per transaction when moving data (migrate, import, export). 2,500 moved 100,000 memories with
# 384-d vectors in 51 s against 60 s at 1,000 (fewer round trips and statements), at 97 MB peak instead
# of 70; 5,000 gained little more (52 s) for 142 MB.
TRANSFER_BATCH = 2500
MAX_TRANSFER_BATCH = 20_000

# Every environment variable StackMemory reads, with what it does; the CLI prints these in --help.
ENV_VARS: dict[str, str] = {
    "STACKMEMORY_DB": "SQLite path or postgresql:// URL; wins over DATABASE_URL",
    "DATABASE_URL": "PostgreSQL URL; selects hosted mode when STACKMEMORY_DB is unset",
    "RAILWAY_ENVIRONMENT": "set by Railway; requires DATABASE_URL and turns on sslmode=require",
    "STACKMEMORY_ENV": "'production' turns on sslmode=require for PostgreSQL",
    "STACKMEMORY_PROJECT": "default project for new memories (else the git remote or folder name)",
    "STACKMEMORY_USER": "author recorded on memories in local mode (else the OS user)",
    "STACKMEMORY_MAX_CONTENT_BYTES": "largest memory content accepted, in bytes (default 65536)",
    "STACKMEMORY_TRANSPORT": "stdio (default), sse or http",
    "STACKMEMORY_HOST": "address to bind for sse/http (default 127.0.0.1)",
    "STACKMEMORY_PORT": "port for sse/http (default $PORT, else 8765)",
    "STACKMEMORY_AUTH": "sse/http: tokens (default; every request needs Authorization: Bearer <token>) or "
                        "none (anyone who can connect acts as the local user; only behind your own auth)",
    "STACKMEMORY_PUBLIC_URL": "the server's URL as clients reach it, for OAuth protected-resource metadata "
                              "(default http://HOST:PORT)",
    "STACKMEMORY_ALLOWED_HOSTS": "extra Host header values accepted over HTTP, comma separated",
    "STACKMEMORY_ALLOWED_ORIGINS": "extra Origin values accepted over HTTP, comma separated",
    "RAILWAY_PUBLIC_DOMAIN": "set by Railway; accepted as a Host header automatically",
    "STACKMEMORY_POOL_MIN": "PostgreSQL pool minimum connections (default 2)",
    "STACKMEMORY_POOL_MAX": "PostgreSQL pool maximum connections (default 20)",
    "STACKMEMORY_POOL_TIMEOUT": "seconds a call waits for a pooled connection (default 10)",
    "STACKMEMORY_AUTO_MIGRATE": "apply database migrations on start (default on; 0 to turn off)",
    "STACKMEMORY_REDACT": "on (default): credentials in memory content and metadata (API keys, tokens, private "
                          "keys, passwords) are replaced by [REDACTED:<kind>] before storing; off keeps them",
    "STACKMEMORY_MAX_REQUEST_BYTES": "sse/http: largest request body accepted, in bytes (default 1048576; "
                                     "must exceed STACKMEMORY_MAX_CONTENT_BYTES)",
    "STACKMEMORY_RATE_LIMIT": "sse/http: requests per second per token (per client address without tokens), "
                              "with bursts of twice that (default 50; 0 turns the limit off)",
    "STACKMEMORY_LOG_LEVEL": "DEBUG, INFO, WARNING (default) or ERROR; logs go to stderr",
    "STACKMEMORY_EMBEDDINGS": "local (default), openai or none: who turns text into vectors",
    "STACKMEMORY_EMBEDDING_MODEL": "model name (local default sentence-transformers/all-MiniLM-L6-v2; "
                                   "openai default text-embedding-3-small)",
    "STACKMEMORY_EMBEDDING_MODEL_PATH": "folder with model.onnx + tokenizer.json: load the local model "
                                        "from disk, offline",
    "STACKMEMORY_MODEL_CACHE": "where downloaded local models are kept (default ~/.stackmemory/models)",
    "STACKMEMORY_VECTOR_INDEX": "SQLite vector search: auto or memory (default: the in-process index), or "
                                "sqlite-vec (an exact scan in SQL, where this Python can load extensions)",
    "OPENAI_API_KEY": "key for STACKMEMORY_EMBEDDINGS=openai",
    "OPENAI_BASE_URL": "OpenAI-compatible endpoint (Ollama, vLLM, ...) for STACKMEMORY_EMBEDDINGS=openai",
    "STACKMEMORY_LINEAR_URL": "Linear's GraphQL endpoint (default https://api.linear.app/graphql)",
    "STACKMEMORY_LINEAR_INTERVAL": "seconds between scheduled Linear syncs of each connected workspace "
                                   "(default 300; 0: only on demand and by webhook)",
    "LINEAR_API_KEY": "the Linear API key `stackmemory linear connect` stores when given no --api-key(-env)",
}


@dataclass(frozen=True)
class Settings:
    """Everything configurable, resolved once at start."""

    backend: Backend
    db: str
    reason: str
    max_content_bytes: int = 65536
    project: str | None = None
    user: str = "local"
    transport: Literal["stdio", "sse", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    auth: Literal["tokens", "none"] = "tokens"
    public_url: str | None = None
    pool_min: int = 2
    pool_max: int = 20
    pool_timeout: float = 10.0
    auto_migrate: bool = True
    log_level: str = "WARNING"
    embeddings: Literal["local", "openai", "none"] = "local"
    embedding_model: str | None = None
    embedding_model_path: str | None = None
    model_cache: str = "~/.stackmemory/models"
    vector_index: Literal["auto", "sqlite-vec", "memory"] = "auto"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    linear_url: str = DEFAULT_LINEAR_URL
    linear_interval: float = 300.0
    redact: bool = True
    max_request_bytes: int = 1048576
    rate_limit: float = 50.0
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def base_url(self) -> str:
        """Where clients reach this server over HTTP: STACKMEMORY_PUBLIC_URL, else the bound address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def secret(self, var: str) -> str | None:
        """A secret named at run time (`linear connect --api-key-env VAR`), from the environment read at start."""
        return self.env.get(var) or None

    @property
    def redacted_db(self) -> str:
        return redact_url(self.db) if self.backend == "postgres" else self.db

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **flags: object) -> Settings:
        """Resolve settings: explicit flags beat environment variables beat defaults."""
        env = dict(os.environ if env is None else env)
        backend, db, reason = _choose_backend(flags.get("db"), env)

        def pick(flag: str, var: str, default: str) -> str:
            value = flags.get(flag)
            return str(value) if value not in (None, "") else env.get(var) or default

        settings = cls(
            backend=backend,
            db=db,
            reason=reason,
            max_content_bytes=_int(pick("max_content_bytes", "STACKMEMORY_MAX_CONTENT_BYTES", "65536"),
                                   "STACKMEMORY_MAX_CONTENT_BYTES", 1),
            project=pick("project", "STACKMEMORY_PROJECT", "") or None,
            user=pick("user", "STACKMEMORY_USER", "") or _os_user(),
            transport=_choice(pick("transport", "STACKMEMORY_TRANSPORT", "stdio"), "STACKMEMORY_TRANSPORT",
                              ("stdio", "sse", "http")),  # type: ignore[arg-type]
            host=pick("host", "STACKMEMORY_HOST", "127.0.0.1"),
            port=_int(pick("port", "STACKMEMORY_PORT", env.get("PORT") or "8765"), "STACKMEMORY_PORT", 0),
            auth=_choice(pick("auth", "STACKMEMORY_AUTH", "tokens"), "STACKMEMORY_AUTH",
                         ("tokens", "none")),  # type: ignore[arg-type]
            public_url=_url(pick("public_url", "STACKMEMORY_PUBLIC_URL", "") or _railway_url(env) or "",
                            "STACKMEMORY_PUBLIC_URL"),
            allowed_hosts=_csv(env.get("STACKMEMORY_ALLOWED_HOSTS", "")) + _railway(env, ""),
            allowed_origins=_csv(env.get("STACKMEMORY_ALLOWED_ORIGINS", "")) + _railway(env, "https://"),
            pool_min=_int(env.get("STACKMEMORY_POOL_MIN", "2"), "STACKMEMORY_POOL_MIN", 0),
            pool_max=_int(env.get("STACKMEMORY_POOL_MAX", "20"), "STACKMEMORY_POOL_MAX", 1),
            pool_timeout=float(_int(env.get("STACKMEMORY_POOL_TIMEOUT", "10"), "STACKMEMORY_POOL_TIMEOUT", 1)),
            auto_migrate=env.get("STACKMEMORY_AUTO_MIGRATE", "1").lower() not in ("0", "false", "no", "off"),
            log_level=_choice(pick("log_level", "STACKMEMORY_LOG_LEVEL", "WARNING").upper(), "STACKMEMORY_LOG_LEVEL",
                              LOG_LEVELS),
            embeddings=_choice(pick("embeddings", "STACKMEMORY_EMBEDDINGS", "local"), "STACKMEMORY_EMBEDDINGS",
                               ("local", "openai", "none")),  # type: ignore[arg-type]
            embedding_model=pick("embedding_model", "STACKMEMORY_EMBEDDING_MODEL", "") or None,
            embedding_model_path=pick("embedding_model_path", "STACKMEMORY_EMBEDDING_MODEL_PATH", "") or None,
            model_cache=env.get("STACKMEMORY_MODEL_CACHE") or "~/.stackmemory/models",
            vector_index=_choice(env.get("STACKMEMORY_VECTOR_INDEX") or "auto", "STACKMEMORY_VECTOR_INDEX",
                                 ("auto", "sqlite-vec", "memory")),  # type: ignore[arg-type]
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            linear_url=env.get("STACKMEMORY_LINEAR_URL") or DEFAULT_LINEAR_URL,
            linear_interval=float(_int(env.get("STACKMEMORY_LINEAR_INTERVAL", "300"),
                                       "STACKMEMORY_LINEAR_INTERVAL", 0)),
            redact=_switch(env.get("STACKMEMORY_REDACT", "on"), "STACKMEMORY_REDACT"),
            max_request_bytes=_int(env.get("STACKMEMORY_MAX_REQUEST_BYTES", "1048576"),
                                   "STACKMEMORY_MAX_REQUEST_BYTES", 1024),
            rate_limit=float(_int(env.get("STACKMEMORY_RATE_LIMIT", "50"), "STACKMEMORY_RATE_LIMIT", 0)),
            env=env,
        )
        if settings.transport != "stdio" and settings.max_request_bytes <= settings.max_content_bytes:
            raise ConfigError(f"STACKMEMORY_MAX_REQUEST_BYTES={settings.max_request_bytes} must be larger than "
                              f"STACKMEMORY_MAX_CONTENT_BYTES={settings.max_content_bytes} (a request carries the "
                              "content, JSON-escaped, plus its other arguments); raise it")
        return settings


def _choose_backend(flag_db: object, env: Mapping[str, str]) -> tuple[Backend, str, str]:
    explicit = str(flag_db) if flag_db else None
    if explicit:
        return _classify(explicit, "--db was given", env)
    if env.get("STACKMEMORY_DB"):
        return _classify(env["STACKMEMORY_DB"], "STACKMEMORY_DB is set", env)
    if env.get("DATABASE_URL"):
        return _classify(env["DATABASE_URL"], "DATABASE_URL is set", env)
    if env.get("RAILWAY_ENVIRONMENT"):
        raise ConfigError(
            "RAILWAY_ENVIRONMENT is set but DATABASE_URL is not: add a PostgreSQL service to the Railway "
            "project and reference its DATABASE_URL in this service's variables"
        )
    path = DEFAULT_DB.expanduser()
    return "sqlite", str(path), "default: no STACKMEMORY_DB, --db or DATABASE_URL given"


def _classify(target: str, why: str, env: Mapping[str, str]) -> tuple[Backend, str, str]:
    if target.startswith(("postgres://", "postgresql://")):
        return "postgres", _with_tls(target, env), why
    if "://" in target:
        raise ConfigError(
            f"database {redact_url(target)!r} is neither a file path nor a postgresql:// URL; "
            "give a SQLite file path or a PostgreSQL URL"
        )
    return "sqlite", str(Path(target).expanduser()), why


def _with_tls(url: str, env: Mapping[str, str]) -> str:
    """Require TLS in production and on Railway unless the URL already chose an sslmode."""
    wants_tls = env.get("STACKMEMORY_ENV", "").lower() == "production" or bool(env.get("RAILWAY_ENVIRONMENT"))
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not wants_tls or any(k == "sslmode" for k, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("sslmode", "require")])))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SECRET_PARAMETERS = ("password", "sslpassword")  # libpq takes a password in the query string as well


def redact_url(url: str) -> str:
    """The URL with any password (before the host, or a `password=` parameter) replaced by '***', safe to
    print and log."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key.lower() in SECRET_PARAMETERS for key, _ in query):
        masked = [(key, "***" if key.lower() in SECRET_PARAMETERS else value) for key, value in query]
        parts = parts._replace(query=urlencode(masked, safe="*/"))
    return urlunsplit(parts)


def _url(raw: str, name: str) -> str | None:
    """An http(s) URL with a host, or None when not given."""
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={raw!r} is not an http(s) URL; set it to the address clients use, "
                          "e.g. https://memory.example.com")
    return raw


def _int(raw: str, name: str, minimum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; set it to an integer >= {minimum}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is too small; set it to an integer >= {minimum}")
    return value


def _switch(raw: str, name: str) -> bool:
    value = raw.strip().lower()
    if value in ("on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise ConfigError(f"{name}={raw!r} is not on or off")


def _choice(raw: str, name: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(allowed)}")
    return raw


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _railway(env: Mapping[str, str], prefix: str) -> tuple[str, ...]:
    """Railway names the service's public domain; accept it as a Host (and https Origin) automatically."""
    domain = env.get("RAILWAY_PUBLIC_DOMAIN", "")
    return (prefix + domain,) if domain else ()


def _railway_url(env: Mapping[str, str]) -> str:
    domain = env.get("RAILWAY_PUBLIC_DOMAIN", "")
    return f"https://{domain}" if domain else ""


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "local"
