"""Every route the API serves, grouped by what it is for; the app factory registers them."""

from __future__ import annotations

from typing import Any

from control.api.apps import AppController
from control.api.audit import operator_audit, tenant_audit
from control.api.backups import BackupController
from control.api.compute_limits import COMPUTE_LIMIT_ROUTES
from control.api.cron import CronController
from control.api.databases import DATABASE_LIMIT_ROUTES, DatabaseController
from control.api.deployments import DeploymentController, ReleaseController
from control.api.domains import DomainController, verify_token
from control.api.env import EnvController
from control.api.environments import EnvironmentController
from control.api.gateway import GATEWAY_ROUTES
from control.api.health import healthz, readyz
from control.api.inference_limits import INFERENCE_LIMIT_ROUTES
from control.api.keys import KeyController, whoami
from control.api.links import LinkController
from control.api.logs import LogController
from control.api.metrics import metrics_handler
from control.api.nodes import NODE_ROUTES
from control.api.operator_health import operator_health
from control.api.previews import PreviewController
from control.api.registration import REGISTRATION_ROUTES
from control.api.runs import RunController
from control.api.snapshots import SNAPSHOT_ROUTES
from control.api.spec import openapi_document
from control.api.tenants import TenantController
from control.api.usage import USAGE_ROUTES
from control.api.volumes import STORAGE_LIMIT_ROUTES, VolumeController
from control.settings import Settings


def route_handlers(settings: Settings) -> list[Any]:
    platform = [
        openapi_document,
        healthz,
        readyz,
        operator_health,
        metrics_handler(public=settings.metrics_public),
        verify_token,
    ]
    identity = [
        whoami,
        TenantController,
        KeyController,
        tenant_audit,
        operator_audit,
        *COMPUTE_LIMIT_ROUTES,
        *REGISTRATION_ROUTES,
    ]
    apps = [
        AppController,
        EnvController,
        DeploymentController,
        ReleaseController,
        LogController,
        RunController,
        CronController,
        VolumeController,
        DomainController,
        PreviewController,
        *SNAPSHOT_ROUTES,
    ]
    sandboxes = [EnvironmentController]
    databases = [DatabaseController, BackupController, LinkController, *DATABASE_LIMIT_ROUTES, *STORAGE_LIMIT_ROUTES]
    inference = [*NODE_ROUTES, *GATEWAY_ROUTES, *USAGE_ROUTES, *INFERENCE_LIMIT_ROUTES]
    return [*platform, *identity, *apps, *sandboxes, *databases, *inference]
