"""Optional API keys: an ASGI middleware that answers 401 to a request without a valid key.

Installed only when keys are configured (SERVE_API_KEYS, SERVE_API_KEYS_FILE). A key is
sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Only the keys' SHA-256
digests are kept; a presented key's digest is compared with every one of them in
constant time. Open without a key: the probes and what a browser loads before it can
send one (the page, the docs and their static files, the OpenAPI document).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from pathlib import Path

from service.errors import Unauthorized
from service.middleware import send_error
from service.settings import Settings

logger = logging.getLogger(__name__)
HASH_PREFIX = "sha256:"
HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
PLAIN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it must fit a header
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json", "/ui"})
OPEN_PREFIXES = ("/ui/", "/static/swagger-ui/")
METRICS_PATH = "/metrics"
# request.state.<this> is True when the request carried a valid key; /readyz reads it.
VALID_KEY_STATE = "api_key_valid"
HOW_TO_SEND = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


class KeysConfigError(ValueError):
    """A configured key that cannot be used; the message never holds the key itself."""


def parse_key(entry: str, where: str) -> bytes:
    """The SHA-256 digest a configured entry stands for: ``sha256:<hex>`` or a plain key."""
    hashed = HASHED.fullmatch(entry)
    if hashed:
        return bytes.fromhex(hashed.group(1))
    if entry.startswith(HASH_PREFIX):
        raise KeysConfigError(f"{where}: a sha256: entry needs 64 hex digits after the prefix")
    if not PLAIN.fullmatch(entry):
        raise KeysConfigError(f"{where}: a key is printable ASCII with no spaces")
    return digest(entry.encode())


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def hashed_line(key: str) -> str:
    """The keys-file line for ``key``: ``sha256:`` and its hex digest."""
    return HASH_PREFIX + digest(key.encode()).hex()


def read_keys_file(path: Path) -> list[bytes]:
    """Digests from a keys file: one key a line; blank lines and # comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise KeysConfigError(f"SERVE_API_KEYS_FILE: cannot read {path}: {error}") from error
    digests = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            digests.append(parse_key(entry, f"SERVE_API_KEYS_FILE {path}, line {number}"))
    if not digests:
        logger.warning("SERVE_API_KEYS_FILE %s holds no key", path)
    return digests


class KeyRing:
    """The configured keys' digests; empty when API keys are off."""

    def __init__(self, digests: list[bytes]) -> None:
        self._digests = tuple(dict.fromkeys(digests))

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        digests = [
            parse_key(entry.strip(), f"SERVE_API_KEYS, entry {number}")
            for number, entry in enumerate(settings.api_keys.split(","), start=1)
            if entry.strip()
        ]
        if settings.api_keys_file is not None:
            digests += read_keys_file(settings.api_keys_file)
        return cls(digests)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, key: bytes) -> bool:
        """Whether ``key`` is one of the keys: its digest against each, with no early exit."""
        presented = digest(key)
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(presented, known)
        return found


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request carries: Authorization's Bearer token and X-API-Key's value."""
    keys = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                keys.append(token.strip())
        elif name == b"x-api-key":
            keys.append(value.strip())
    return [key for key in keys if key]


def is_open(path: str, metrics_need_key: bool) -> bool:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    return path == METRICS_PATH and not metrics_need_key


class ApiKeyMiddleware:
    """401 in the route's error shape for a request with no valid key to a closed path.

    Runs inside RequestContextMiddleware, so a 401 carries its X-Request-ID and is
    counted and logged like any answer (the access log has the path, never a header).
    """

    def __init__(self, app, keys: KeyRing, metrics_need_key: bool) -> None:
        self.app = app
        self.keys = keys
        self.metrics_need_key = metrics_need_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = presented_keys(scope["headers"])
        valid = any([self.keys.accepts(key) for key in presented])  # each checked in full
        scope.setdefault("state", {})[VALID_KEY_STATE] = valid
        if valid or is_open(scope["path"], self.metrics_need_key):
            await self.app(scope, receive, send)
        else:
            problem = "the API key is not valid" if presented else "this route needs an API key"
            await send_error(scope, send, Unauthorized(f"{problem}; {HOW_TO_SEND}"))


def install(app, settings: Settings) -> KeyRing:
    """Add the middleware to ``app`` when keys are configured; the keys, empty if none."""
    keys = KeyRing.from_settings(settings)
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_need_key=settings.metrics_need_key)
        logger.info(
            "API keys on: %d configured; /metrics %s",
            len(keys),
            "needs one" if settings.metrics_need_key else "is open",
        )
    return keys
