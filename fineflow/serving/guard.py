"""Who may call `fineflow serve`, checked before the app reads a byte of the body.

A server on loopback without an API key is still reachable from the web pages its user opens:

- a page on another site can POST a "simple" request (`Content-Type: text/plain`, no preflight) to
  http://127.0.0.1:8000; the browser sends it and only hides the answer, so the model would generate and
  the request would land in the traffic capture. POSTs must be `application/json` (415 otherwise), which a
  cross-site page can only send after a CORS preflight this server does not grant;
- a page that sends an Origin header other than the server's own (or `serve.allowed_origins`) is refused
  (403), whatever its content type;
- DNS rebinding points an attacker's name at 127.0.0.1, making the page same-origin with the server: the
  browser then sends `Host: attacker.example`. Only the server's own names are answered (400 otherwise):
  `serve.host`, the loopback names when it is bound to loopback or to every interface, and
  `serve.allowed_hosts`. `"*"` there answers any Host, and the config accepts it only with
  `serve.api_key_env` set: a rebinding page holds no key, so a server that requires one needs no Host
  check (behind SkyServe's load balancer, whose address clients dial, the Host is not known in advance).

Clients that are not browsers (the OpenAI SDK, curl) send no Origin and their Host is the address they
dial, so they pass. The check is a plain ASGI middleware: Starlette's BaseHTTPMiddleware would wrap
`receive` and hide a client's disconnect from the app, which cancels generation on it.
"""

from __future__ import annotations

import logging
import uuid

from fineflow.config import ANY_HOST, ServeConfig, is_loopback
from fineflow.serving.schema import APIError

log = logging.getLogger("fineflow.serve")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})  # bound to every interface: loopback included
JSON_MEDIA_TYPE = "application/json"


def own_host_names(settings: ServeConfig) -> frozenset[str]:
    """The host names (no port) this server answers to."""
    bound = _host_name(settings.host.lower())
    names = {bound, *(_host_name(host) for host in settings.allowed_hosts)}
    if bound in WILDCARD_BINDS or is_loopback(bound):
        names |= LOOPBACK_NAMES
    return frozenset(names - WILDCARD_BINDS)


def own_origins(settings: ServeConfig) -> frozenset[str]:
    """The origins a browser page served by this server itself would send, plus the allowed ones."""
    port = settings.port
    names = own_host_names(settings) - {ANY_HOST}
    own = {f"http://{f'[{name}]' if ':' in name else name}:{port}" for name in names}
    if port == 80:
        own |= {f"http://{f'[{name}]' if ':' in name else name}" for name in names}
    return frozenset(own | set(settings.allowed_origins))


def refusal(scope: dict, hosts: frozenset[str], origins: frozenset[str]) -> APIError | None:
    """Why this request is refused, or None."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    host = headers.get("host", "")
    if ANY_HOST not in hosts and _host_name(host) not in hosts:
        return APIError(
            400,
            f"Host {host[:100]!r} is not this server's (add the name clients use to serve.allowed_hosts)",
            None,
            "invalid_host",
        )
    origin = headers.get("origin")
    if origin is not None and origin.lower().rstrip("/") not in origins:
        return APIError(
            403,
            f"requests from origin {origin[:100]!r} are not allowed (serve.allowed_origins)",
            None,
            "origin_not_allowed",
        )
    if scope["method"] == "POST":
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            return APIError(
                415,
                f"Content-Type must be {JSON_MEDIA_TYPE}, got {media_type[:100] or 'none'!r}",
                None,
                "unsupported_media_type",
            )
    return None


class RequestGuard:
    """ASGI middleware: refuses, in OpenAI's error shape, what `refusal` finds; passes the rest untouched."""

    def __init__(self, app, settings: ServeConfig):
        self.app = app
        self.hosts = own_host_names(settings)
        self.origins = own_origins(settings)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (error := refusal(scope, self.hosts, self.origins)) is not None:
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            log.info("request %s refused: %d %s", request_id, error.status, error.code)
            await error.response(request_id)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name part of a Host header or a configured name: `name`, `name:port`, `v6`, `[v6]` or
    `[v6]:port`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host
