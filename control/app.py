"""The app factory: ``control.app:create_app(settings)`` wires everything together."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from control import __doc__ as _doc
from control.api.audit import AuditTrail
from control.api.auth import PUBLIC_PATHS, ApiKeyAuthentication, access_guard
from control.api.caller import caller_tenant
from control.api.gateway import Upstream, gateway_dependency
from control.api.http_limits import BodyTimeout, HeaderLimit
from control.api.idempotency import IdempotencyMiddleware, idempotency_sweeper
from control.api.inference_metrics import InferenceMetrics
from control.api.metrics import HttpMetrics, Metrics
from control.api.node_auth import NODE_TOKEN_SCHEME
from control.api.problems import EXCEPTION_HANDLERS
from control.api.rate_limits import RateLimitMiddleware
from control.api.request_context import RequestContext
from control.api.routes import route_handlers
from control.logging import configure_logging
from control.security import scopes
from control.security.master_keys import MasterKeyError
from control.services import Services
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


def _constant(value: object) -> Callable[[], object]:
    return lambda: value


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    services = services or Services.build(settings)
    upstream = Upstream(settings)  # pooled connections to inference nodes, opened in the serving loop

    def on_startup() -> None:
        migrate.upgrade(services.db.engine)
        if settings.require_operator_key and not services.keys.has_operator_key():
            raise StartupRefused("No operator key exists. Run `moorage admin bootstrap` first.")
        try:  # fail at start, not on the first secret, when the master keys are unusable
            services.keyring.current()
        except MasterKeyError as exc:
            raise StartupRefused(str(exc)) from None
        log.info("started", database=services.db.engine.url.render_as_string(hide_password=True))

    metrics = Metrics(services.breakers)
    inference_metrics = InferenceMetrics(metrics.registry, services.inference)
    app = Litestar(
        route_handlers=route_handlers(settings),
        dependencies={
            **{name: Provide(_constant(service), use_cache=True, sync_to_thread=False)
               for name, service in services.injectable().items()},
            "upstream": Provide(_constant(upstream), use_cache=True, sync_to_thread=False),
            "prometheus": Provide(_constant(metrics), use_cache=True, sync_to_thread=False),
            "inference_metrics": Provide(_constant(inference_metrics), use_cache=True, sync_to_thread=False),
            "caller_tenant": Provide(caller_tenant, sync_to_thread=False),
            "gateway": Provide(gateway_dependency, use_cache=True, sync_to_thread=False),
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
        on_startup=[on_startup, services.deploys.start, services.databases.start],  # job workers + reconciler, after migrations
        on_shutdown=[services.databases.stop, services.deploys.stop, upstream.aclose, services.db.dispose],
        lifespan=[idempotency_sweeper(services.idempotency, settings.idempotency_purge_interval_s)],
        logging_config=None,
        debug=False,
    )
    # Middleware (authentication) reaches services here; handlers only through dependencies.
    app.state.services = services
    app.state.metrics = metrics
    # Outermost, so answers made before routing (404, 405) get a request id too.
    # Audit inside the request context (it reads the request id), outside routing (it sees every status).
    # Body timeouts innermost: their 408 is raised inside Litestar, so it becomes a problem answer.
    timed = BodyTimeout(app.asgi_handler, total_s=settings.request_body_timeout_s, idle_s=settings.request_body_idle_timeout_s)
    limited = HeaderLimit(timed, max_bytes=settings.max_header_bytes)
    app.asgi_handler = RequestContext(HttpMetrics(AuditTrail(limited, services.audit), metrics))
    return app
