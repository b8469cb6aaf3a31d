"""The app factory: ``control.app:create_app(settings)`` wires everything together."""

from __future__ import annotations

import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from control import __doc__ as _doc
from control.api.apps import AppController
from control.api.backups import BackupController
from control.api.databases import DATABASE_LIMIT_ROUTES, DatabaseController
from control.api.deployments import DeploymentController
from control.api.logs import LogController
from control.api.releases import ReleaseController
from control.api.audit import AuditTrail, operator_audit, tenant_audit
from control.api.auth import PUBLIC_PATHS, ApiKeyAuthentication, access_guard
from control.api.env import EnvController
from control.api.gateway import GATEWAY_ROUTES, Upstream
from control.api.inference_limits import INFERENCE_LIMIT_ROUTES
from control.api.inference_metrics import InferenceMetrics
from control.api.node_auth import NODE_TOKEN_SCHEME
from control.api.nodes import NODE_ROUTES
from control.api.usage import USAGE_ROUTES
from control.api.health import healthz, readyz
from control.api.idempotency import IdempotencyMiddleware, idempotency_sweeper
from control.api.keys import KeyController, whoami
from control.api.links import LinkController
from control.api.metrics import HttpMetrics, Metrics, metrics_handler
from control.api.problems import EXCEPTION_HANDLERS
from control.api.rate_limits import RateLimitMiddleware
from control.api.spec import openapi_document
from control.api.request_context import RequestContext
from control.api.tenants import TenantController
from control.logging import configure_logging
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
                    type="http", scheme="bearer", description="API key: `Authorization: Bearer mrg_live_...`"
                ),
                "NodeToken": NODE_TOKEN_SCHEME,
            }
        ),
        use_handler_docstrings=True,
    )


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

    app = Litestar(
        route_handlers=[openapi_document, healthz, readyz, metrics_handler(public=settings.metrics_public), whoami, TenantController, KeyController, AppController, EnvController, tenant_audit, operator_audit, DeploymentController, ReleaseController, LogController, *NODE_ROUTES, *GATEWAY_ROUTES, *USAGE_ROUTES, *INFERENCE_LIMIT_ROUTES, DatabaseController, BackupController, LinkController, *DATABASE_LIMIT_ROUTES],
        dependencies={
            "tenants": Provide(lambda: services.tenants, use_cache=True, sync_to_thread=False),
            "keys": Provide(lambda: services.keys, use_cache=True, sync_to_thread=False),
            "apps": Provide(lambda: services.apps, use_cache=True, sync_to_thread=False),
            "limits": Provide(lambda: services.limits, use_cache=True, sync_to_thread=False),
            "env_vars": Provide(lambda: services.env_vars, use_cache=True, sync_to_thread=False),
            "deployments": Provide(lambda: services.deploys.deployments, use_cache=True, sync_to_thread=False),
            "releases": Provide(lambda: services.deploys.releases, use_cache=True, sync_to_thread=False),
            "audit": Provide(lambda: services.audit, use_cache=True, sync_to_thread=False),
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
    app.state.services = services
    app.state.metrics = metrics = Metrics(services.breakers)
    app.state.upstream = upstream
    app.state.inference_metrics = InferenceMetrics(metrics.registry, services.inference)
    # Outermost, so answers made before routing (404, 405) get a request id too.
    # Audit inside the request context (it reads the request id), outside routing (it sees every status).
    app.asgi_handler = RequestContext(HttpMetrics(AuditTrail(app.asgi_handler, services.audit), metrics))
    return app
