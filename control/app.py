"""The app factory: ``control.app:create_app(settings)`` wires everything together."""

from __future__ import annotations

from operator import attrgetter
from typing import cast

import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from control import __doc__ as _doc
from control.api.auth import PUBLIC_PATHS, ApiKeyAuthentication, access_guard
from control.api.caller import caller_tenant
from control.api.gateway import gateway_dependency
from control.api.http_limits import BodyTimeout, HeaderLimit
from control.api.idempotency import IdempotencyMiddleware
from control.api.metrics import HttpMetrics
from control.api.node_auth import NODE_TOKEN_SCHEME
from control.api.problems import EXCEPTION_HANDLERS
from control.api.rate_limits import RateLimitMiddleware
from control.api.request_context import RequestContext
from control.api.routes import route_handlers
from control.api.unit_of_work import RequestUnitOfWork
from control.bootstrap import Services, bootstrap
from control.domain.errors import DatabaseInUse
from control.jobs.retention import retention_sweeper
from control.logging import configure_logging
from control.security import scopes
from control.security.master_keys import MasterKeyError
from control.settings import Settings
from control.store import migrate

log = structlog.get_logger("moorage.app")
VERSION = "0.1.0"


class StartupRefused(RuntimeError):
    """The server must not start in its current state; the message says why."""


def _openapi() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="moorage",
        version=VERSION,
        description=(_doc or "").strip() + " Errors are RFC 9457 application/problem+json.",
        path="/openapi",
        render_plugins=[JsonRenderPlugin(path=["/openapi.json", "/"]), YamlRenderPlugin(path="/openapi.yaml")],
        components=Components(
            security_schemes={
                "ApiKey": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="API key: `Authorization: Bearer mrg_live_...`.\n\n" + scopes.describe(),
                ),
                "NodeToken": NODE_TOKEN_SCHEME,
            }
        ),
        use_handler_docstrings=True,
    )


def _service(path: str) -> Provide:
    """A dependency read from the services attached to the app, per request (not cached:
    the tests attach fresh services to one app)."""
    get = attrgetter(path)

    def provide(state: State) -> object:
        return get(state.services)

    return Provide(provide, sync_to_thread=False)


def app_shape(settings: Settings) -> tuple[object, ...]:
    """The settings the app itself is built from (routes, limits on the wire, logging): two
    settings with the same shape can share one app and differ only in its services."""
    return (
        settings.metrics_public,
        settings.request_body_timeout_s,
        settings.request_body_idle_timeout_s,
        settings.max_header_bytes,
        settings.log_level,
        settings.log_format,
    )


def build_app(settings: Settings) -> Litestar:
    """The HTTP app without services: ``attach`` gives it the ones it serves with."""
    configure_logging(settings.log_level, settings.log_format)

    def on_startup(app: Litestar) -> None:
        services: Services = app.state.services
        migrate.upgrade(services.db.engine)
        if services.settings.require_operator_key and not services.keys.has_operator_key():
            raise StartupRefused("No operator key exists. Run `moorage admin bootstrap` first.")
        try:  # fail at start, not on the first secret, when the master keys are unusable
            services.keyring.current()
        except MasterKeyError as exc:
            raise StartupRefused(str(exc)) from None
        try:
            services.start()  # job workers + reconciler, after migrations
        except DatabaseInUse as exc:
            raise StartupRefused(str(exc)) from None
        log.info("started", database=services.db.engine.url.render_as_string(hide_password=True))

    async def on_shutdown(app: Litestar) -> None:
        services: Services = app.state.services
        services.stop()
        await services.upstream.aclose()
        services.db.dispose()

    app = Litestar(
        route_handlers=route_handlers(settings),
        dependencies={
            **{name: _service(path) for name, path in Services.INJECTABLE.items()},
            "caller_tenant": Provide(caller_tenant, sync_to_thread=False),
            "gateway": Provide(gateway_dependency, sync_to_thread=False),
        },
        # In this order: who is calling, may they call now, have we answered this before.
        middleware=[
            DefineMiddleware(ApiKeyAuthentication, exclude=PUBLIC_PATHS, exclude_from_auth_key="public"),
            RateLimitMiddleware,
            IdempotencyMiddleware,
        ],
        guards=[access_guard],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=_openapi(),
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        lifespan=[retention_sweeper],
        logging_config=None,
        debug=False,
    )

    def services() -> Services:
        return cast("Services", app.state.services)

    # Outermost, so answers made before routing (404, 405) get a request id too.
    # The unit of work inside the request context (its audit row reads the request id), outside
    # routing (it sees every status, and commits before any answer leaves).
    # Body timeouts innermost: their 408 is raised inside Litestar, so it becomes a problem answer.
    timed = BodyTimeout(app.asgi_handler, total_s=settings.request_body_timeout_s, idle_s=settings.request_body_idle_timeout_s)
    limited = HeaderLimit(timed, max_bytes=settings.max_header_bytes)
    app.asgi_handler = RequestContext(HttpMetrics(RequestUnitOfWork(limited, services), services))
    return app


def attach(app: Litestar, services: Services) -> Litestar:
    """Serve ``app`` with ``services``: middleware and dependencies read them from the app's state."""
    configure_logging(services.settings.log_level, services.settings.log_format)
    app.state.services = services
    return app


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    app = build_app(settings)
    return attach(app, services or bootstrap(settings))
