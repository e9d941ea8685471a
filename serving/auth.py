"""Who may call `nightshift serve`: API keys with scopes, read from a key file, and a rate limit per key.

Reading order:
1. The key file: one key per line, `NAME SHA256-HEX SCOPE[,SCOPE]`, `#` starts a comment. Only the SHA-256 of
   each key is stored: keys are 256-bit random tokens (`make_key`, `secrets.token_urlsafe(32)`), so a fast hash
   is enough, and a stolen file lets no one in. `read_key_file` refuses a bad line naming the file and line.
2. `KeyRing.find`: the key a request presents, hashed and compared with every stored hash in constant time.
3. `Guard`: the FastAPI dependencies of the protected routes. A request sends `Authorization: Bearer KEY` (or
   `X-API-Key: KEY`); no key or an unknown one is a 401 with `WWW-Authenticate: Bearer`, a key without the
   route's scope a 403, a key over `serve.rate_limit` (moving window, in memory, per key name) a 429 with
   `Retry-After`. Both headers are declared as security schemes, so the OpenAPI document lists them on each
   protected route. Keys and hashes are never logged; the key's name is (`request.state.api_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from pipelines.config import ConfigError, Settings
from pipelines.telemetry import get_logger

log = get_logger("serve")

SCORE, ADMIN, ALERTS = "score", "admin", "alerts"
# score: every scoring and prediction route; admin: reload and anything that changes state; alerts: Alertmanager's
# webhook (it writes root causes back to Elasticsearch and posts notifications, so a scoring key cannot)
SCOPES = (SCORE, ADMIN, ALERTS)
DEFAULT_KEY_FILE = "api-keys"  # under NIGHTSHIFT_HOME when setting serve.api_keys_file is empty
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
DIGEST = re.compile(r"[0-9a-fA-F]{64}")
MAKE_ONE = "nightshift serve-key NAME --scope score,admin"
HEADER = ("# nightshift serve API keys, one per line: NAME SHA256-HEX SCOPE[,SCOPE] (scopes: score, admin, alerts).\n"
          "# Only each key's SHA-256 is here; add keys with: nightshift serve-key NAME --scope score [--file THIS_FILE]\n")


class KeyFileError(ConfigError):
    """The API key file is missing, unreadable or has a bad line; the message names the file (and the line)."""


# ---- 1. the key file ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ApiKey:
    """One caller: its name (logged, and the rate limit's bucket), the SHA-256 hex of its key, its scopes."""

    name: str
    digest: str = field(repr=False)  # never shown, not even in a traceback's locals
    scopes: frozenset[str]
    line: int = 0


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_file_path(settings: Settings) -> Path:
    """The key file: setting `serve.api_keys_file` (or NIGHTSHIFT_SERVE_API_KEYS_FILE), else `NIGHTSHIFT_HOME/api-keys`."""
    configured = settings.serve.api_keys_file
    return Path(configured).expanduser() if configured else settings.home / DEFAULT_KEY_FILE


def parse_scopes(text: str) -> frozenset[str]:
    """`score,admin` -> {"score", "admin"}.

    Raises:
        ValueError: a scope is unknown, or none is given; the message says which ones exist.
    """
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"unknown scope {unknown[0]!r}" if unknown else "no scope given")
    return frozenset(scopes)


def read_key_file(path: Path) -> list[ApiKey]:
    """The keys of `path` (blank lines and `#` comments skipped).

    Raises:
        KeyFileError: the file cannot be read, or a line is malformed (its number and what is wrong; a field that
            may hold a secret is never repeated), or a name or key appears twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the API key file ({getattr(exc, 'strerror', None) or exc})") from None
    keys: list[ApiKey] = []
    names: dict[str, int] = {}
    digests: dict[str, ApiKey] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue

        def bad(problem: str) -> KeyFileError:
            return KeyFileError(f"{path}:{number}: {problem}")

        if len(fields) != 3:
            raise bad(f"{len(fields)} fields where NAME SHA256-HEX SCOPE[,SCOPE] are expected")
        name, digest, scope_text = fields
        if not NAME.fullmatch(name):
            raise bad(f"the name {name[:64]!r} is not 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
        if not DIGEST.fullmatch(digest):
            raise bad("the second field is not a SHA-256 hex digest (64 hex digits): the file holds each key's hash, "
                      f"never the key itself ({MAKE_ONE} writes the line)")
        try:
            scopes = parse_scopes(scope_text)
        except ValueError as exc:
            raise bad(f"{exc} (scopes: {', '.join(SCOPES)}, comma-separated)") from None
        if name in names:
            raise bad(f"the name {name!r} is already on line {names[name]}: each key needs a name of its own")
        digest = digest.lower()
        if digest in digests:
            raise bad(f"the same key as line {digests[digest].line} ({digests[digest].name!r})")
        key = ApiKey(name, digest, scopes, number)
        names[name] = number
        digests[digest] = key
        keys.append(key)
    return keys


def make_key(path: Path, name: str, scopes: frozenset[str] | set[str]) -> str:
    """Make a new key for `name`, append its hashed line to the key file `path` (created with mode 0600, its folder
    too when missing) and return the key: it is stored nowhere else, and cannot be shown again.

    Raises:
        KeyFileError: the name or a scope is not valid, the name is already in the file, or the file has a bad line.
    """
    if not NAME.fullmatch(name):
        raise KeyFileError(f"key name {name[:64]!r}: use 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
    if not scopes or set(scopes) - set(SCOPES):
        raise KeyFileError(f"scopes {sorted(scopes)}: choose from {', '.join(SCOPES)}")
    existing = read_key_file(path) if path.exists() else []
    taken = next((k for k in existing if k.name == name), None)
    if taken is not None:
        raise KeyFileError(f"{path}:{taken.line}: a key named {name!r} is already there: pick another name, or delete that "
                           "line to revoke the old key first")
    key = secrets.token_urlsafe(32)
    text = f"{name} {hash_key(key)} {','.join(s for s in SCOPES if s in scopes)}\n"
    before = path.read_bytes() if path.exists() else b""
    if not before:
        text = HEADER + text
    elif not before.endswith(b"\n"):  # a hand-edited last line without its newline
        text = "\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # 0600 when created; an existing file keeps its mode
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(text)
    return key


# ---- 2. finding the caller ---------------------------------------------------------------------------------

class KeyRing:
    """The keys of one key file, looked up by the key a request presents."""

    def __init__(self, keys: list[ApiKey], source: Path):
        self.keys, self.source = keys, source

    def find(self, presented: str) -> ApiKey | None:
        """The key whose hash is `presented`'s, or None. Every stored hash is compared, each in constant time."""
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def __len__(self) -> int:
        return len(self.keys)


def load_keys(settings: Settings) -> KeyRing:
    """The key ring of `key_file_path(settings)`.

    Raises:
        KeyFileError: there is no key file (the message says how to make one), it cannot be read, a line is bad,
            or it holds no key.
    """
    path = key_file_path(settings)
    if not path.exists():
        if settings.serve.api_keys_file:
            raise KeyFileError(f"setting serve.api_keys_file: no such file {path}; make a key with: {MAKE_ONE} --file {path}")
        raise KeyFileError(f"nightshift serve answers only callers with an API key, and there is no key file {path} (setting "
                           f"serve.api_keys_file); make a key with: {MAKE_ONE}")
    keys = read_key_file(path)
    if not keys:
        raise KeyFileError(f"{path}: no API key in it; add one with: {MAKE_ONE} --file {path}")
    return KeyRing(keys, path)


# ---- 3. the routes' dependencies ---------------------------------------------------------------------------

# The two ways a client may send its key; as security schemes they appear in /openapi.json on each protected route.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer KEY (make keys with nightshift serve-key)")
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: KEY, instead of the bearer token")


def _problem(description: str, **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": {"type": "object", "required": ["detail"],
                                                                            "properties": {"detail": {"type": "string"}}}}}}
    if headers:
        response["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return response


# The answers a protected route may give before its handler runs, for the OpenAPI document.
REFUSALS: dict[int | str, dict[str, Any]] = {
    401: _problem("no API key, or one that is not in the key file", **{"WWW-Authenticate": "Bearer"}),
    403: _problem("the API key lacks the scope this route needs"),
    429: _problem("the API key is over its rate limit (setting serve.rate_limit)", **{"Retry-After": "seconds to wait"}),
}


class Guard:
    """The API keys and rate limit of one server; `require(scope)` is the dependency of a protected route."""

    def __init__(self, keys: KeyRing, rate_limit: str, on_refused: Callable[[str, int], None] | None = None):
        """`rate_limit`: requests per key in the `limits` library's notation ("600/minute"; empty: none).
        `on_refused(route, status)` is told of every refused request (metrics).

        Raises:
            ConfigError: `rate_limit` cannot be read.
        """
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.keys = keys
        self.rate_limit = rate_limit.strip()
        try:
            self.limit = parse(self.rate_limit) if self.rate_limit else None
        except ValueError as exc:
            raise ConfigError(f"setting serve.rate_limit: {exc} (e.g. 600/minute, 10/second; empty: no limit)") from None
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.on_refused = on_refused
        self.checks: set[Callable] = set()  # every dependency `require` made: the app checks each route has one

    def reload(self, settings: Settings) -> int:
        """Read the key file again and use its keys from now on; returns how many it holds.

        Raises:
            KeyFileError: as `load_keys`; the keys in use stay.
        """
        self.keys = load_keys(settings)
        return len(self.keys)

    def require(self, scope: str | None) -> Callable:
        """The dependency that lets a request through with a known key that has `scope` (None: any scope) and is
        under the rate limit; it returns the key and sets `request.state.api_key` to its name."""

        async def api_key(request: Request, bearer: HTTPAuthorizationCredentials | None = Security(BEARER),
                          header: str | None = Security(API_KEY_HEADER)) -> ApiKey:
            route = request.scope.get("route")
            path = getattr(route, "path", request.url.path)
            presented = bearer.credentials if bearer is not None else header
            if not presented:
                raise self.refuse(path, 401, "no API key: send the header 'Authorization: Bearer KEY' (or 'X-API-Key: KEY'); "
                                             "an operator makes keys with: nightshift serve-key NAME --scope score",
                                  {"WWW-Authenticate": "Bearer"})
            key = self.keys.find(presented)
            if key is None:
                log.warning("request with an unknown API key", extra={"route": path, "client": request.client.host if request.client else None})
                raise self.refuse(path, 401, "unknown API key: it is not in the server's key file (revoked, or mistyped)",
                                  {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            request.state.api_key = key.name
            if self.limit is not None and not self.limiter.hit(self.limit, key.name):
                reset = self.limiter.get_window_stats(self.limit, key.name).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                raise self.refuse(path, 429, f"API key {key.name!r} is over its rate limit of {self.rate_limit} (setting "
                                             f"serve.rate_limit); retry in {wait}s", {"Retry-After": str(wait)})
            if scope is not None and scope not in key.scopes:
                raise self.refuse(path, 403, f"API key {key.name!r} lacks the scope {scope!r} that this route needs (it has: "
                                             f"{', '.join(sorted(key.scopes))})")
            return key

        self.checks.add(api_key)
        return api_key

    def refuse(self, route: str, status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
        if self.on_refused is not None:
            self.on_refused(route, status)
        return HTTPException(status, detail=detail, headers=headers)
