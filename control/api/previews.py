"""Previews of an app (``/v1/apps/{app}/previews``): a copy of the app built from another
source, at its own host ``<app>--<slug>.<tenant>.<base-domain>``, deleted at its TTL.

``POST`` takes the source as a deployment does: ``application/json``
``{"git": {"url", "ref"}, "ttl_s"?, "env"?: {NAME: value | null}, "snapshot"?}``, or a
gzip-compressed tar archive (``Content-Type: application/gzip``) with ``?ttl_s=``. It answers
202 with the preview and its first deployment to poll (``Location``: the preview). The
preview's deployments and build log are readable (read-only) at
``/v1/apps/{preview id}/deployments/...``; every other app endpoint answers 404 for a preview.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any

import anyio.to_thread
import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from control.api.deployments import DeploymentOut, GitSource, deployment_out
from control.api.endpoints import endpoint, route
from control.api.problems import Problem
from control.api.source_forms import (
    JSON,
    UPLOAD,
    Refused,
    SourceOperation,
    git_source,
    json_body,
    media_type,
    source_body,
    upload,
)
from control.domain.deployments import DeploymentService
from control.domain.previews import Preview, PreviewService
from control.domain.releases import ReleaseService
from control.domain.tenants import TenantService
from control.security.principal import Principal
from control.security.scopes import KeyScope
from control.settings import Settings

TtlQuery = QueryParameter(
    ge=1,
    description="The upload form's TTL in seconds (JSON: `ttl_s` in the body): at most MOORAGE_PREVIEW_TTL_MAX_S, "
    "default MOORAGE_PREVIEW_TTL_DEFAULT_S. The reconciler deletes the preview once it has run out.",
    required=False,
)
EnvOverrides = Annotated[
    dict[str, str | None],
    msgspec.Meta(
        description="Per-preview env overrides on top of a copy of the app's env vars: a value sets one (a new name "
        "is secret), null removes one. The app's own vars never change."
    ),
]


class PreviewCreate(msgspec.Struct, forbid_unknown_fields=True):
    git: GitSource
    ttl_s: Annotated[int, msgspec.Meta(ge=1, description="seconds until it is deleted")] | None = None
    env: EnvOverrides = msgspec.field(default_factory=dict)
    snapshot: Annotated[
        str | None,
        msgspec.Meta(description="a snapshot of this app: the preview gets databases of its own, forked from it"),
    ] = None


class PreviewRedeploy(msgspec.Struct, forbid_unknown_fields=True):
    git: GitSource


class PreviewOut(msgspec.Struct):
    id: Annotated[str, msgspec.Meta(description="the preview's own app id")]
    name: Annotated[str, msgspec.Meta(description="<app>--<slug>: the first label of its host")]
    app: Annotated[str, msgspec.Meta(description="the name of the app it previews")]
    app_id: str
    url: Annotated[str, msgspec.Meta(description="http://<app>--<slug>.<tenant>.<base-domain>, once its deployment runs")]
    status: Annotated[
        str, msgspec.Meta(description="its newest deployment's: queued | building | releasing | running | failed | cancelled")
    ]
    expires_at: Annotated[datetime, msgspec.Meta(description="when the reconciler deletes it (container, route, image, row)")]
    created_at: datetime
    deployment: Annotated[DeploymentOut | None, msgspec.Meta(description="its newest deployment")]

    @classmethod
    def of(cls, preview: Preview, apps_domain: str, releases: ReleaseService) -> PreviewOut:
        app, expires_at = preview.app, preview.app.expires_at
        assert expires_at is not None  # every preview has one
        return cls(
            id=app.id,
            name=app.name,
            app=preview.parent.name,
            app_id=preview.parent.id,
            url=f"http://{app.name}.{apps_domain}",
            status=preview.status,
            expires_at=expires_at,
            created_at=app.created_at,
            deployment=deployment_out(preview.deployment, releases) if preview.deployment else None,
        )


class PreviewList(msgspec.Struct):
    items: list[PreviewOut]


@dataclass
class _CreateOperation(SourceOperation):
    body = source_body(PreviewCreate, UPLOAD + "; `?ttl_s=` sets its TTL")


@dataclass
class _RedeployOperation(SourceOperation):
    body = source_body(PreviewRedeploy, UPLOAD)


def _apps_domain(tenants: TenantService, settings: Settings, tenant_id: str) -> str:
    """``<tenant>.<base-domain>``, as the router writes every app's host (in a worker thread)."""
    return f"{tenants.known_name(tenant_id) or tenants.name(tenant_id)}.{settings.base_domain}"


def _out(preview: Preview, tenants: TenantService, settings: Settings, releases: ReleaseService) -> PreviewOut:
    return PreviewOut.of(preview, _apps_domain(tenants, settings, preview.app.tenant_id), releases)


def _accepted(preview: PreviewOut) -> Response[PreviewOut]:
    return Response(preview, status_code=202, headers={"Location": f"/v1/apps/{preview.app_id}/previews/{preview.id}"})


CREATE_DESCRIPTION = (
    "JSON `{git: {url, ref}, ttl_s?, env?, snapshot?}` or a tar.gz body (`Content-Type: application/gzip`, `?ttl_s=`). "
    "The preview copies the app's port, health check path, builder and env vars (sealed again under its own binding, "
    "with `env` overrides applied), runs 1 replica, and has no volumes, database links or domains. 202 with the preview "
    "and its deployment. 422 `validation-failed` naming `ttl_s` past MOORAGE_PREVIEW_TTL_MAX_S; 422 `quota-exceeded` past "
    "MOORAGE_PREVIEW_MAX_PER_APP previews of the app, or the tenant's `max_apps`, `max_replicas`, `max_cpu`, "
    "`max_memory_mb` or build minutes (a preview is an app for the compute quotas); nothing is made. 409 "
    "`preview-name-unavailable` in the unlikely case that no free `<app>--<slug>` name was drawn: retry."
)


class PreviewController(Controller):
    path = "/v1/apps/{app:str}/previews"
    tags = ("previews",)

    @route(
        "POST",
        "/",
        access=KeyScope.DEPLOY,
        errors=(404, 409, 413, 415),
        status_code=202,
        request_max_body_size=None,
        summary="Create a preview: JSON {git: {url, ref}, ttl_s, env} or a tar.gz upload",
        description=CREATE_DESCRIPTION,
        operation_class=_CreateOperation,
    )
    async def create(
        self,
        request: Request[Any, Principal, Any],
        caller_tenant: NamedDependency[str],
        previews: NamedDependency[PreviewService],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        tenants: NamedDependency[TenantService],
        settings: NamedDependency[Settings],
        app: FromPath[str],
        ttl_s: Annotated[int | None, TtlQuery] = None,
    ) -> Response[PreviewOut] | Response[Problem]:
        tenant_id = caller_tenant
        parent = await anyio.to_thread.run_sync(previews.parent, tenant_id, app)  # 404 before reading any body
        await anyio.to_thread.run_sync(previews.ttl, ttl_s)
        await anyio.to_thread.run_sync(previews.check_new, tenant_id, parent)
        await anyio.to_thread.run_sync(deployments.refuse_if_over_quota, tenant_id, parent, "build")
        deployment_id = deployments.new_id()
        try:
            if media_type(request) == JSON:
                data: PreviewCreate = await json_body(request, PreviewCreate)
                ttl_s, env, snapshot = data.ttl_s or ttl_s, data.env, data.snapshot
                await anyio.to_thread.run_sync(previews.check_options, ttl_s, env, snapshot)
                source_kind, source = "git", await git_source(settings, data.git)
            else:
                await upload(request, deployments, settings, deployment_id)
                source_kind, source, env, snapshot = "archive", {}, {}, None
        except Refused as refused:
            return refused.response
        create = partial(previews.create, ttl_s=ttl_s, env=env, snapshot=snapshot)
        try:
            made = await anyio.to_thread.run_sync(create, tenant_id, parent, deployment_id, source_kind, source)
        except BaseException:
            shutil.rmtree(deployments.workdir(deployment_id), ignore_errors=True)
            raise
        return _accepted(await anyio.to_thread.run_sync(_out, made, tenants, settings, releases))

    @endpoint("GET", "/", access=KeyScope.READ, errors=(404,), summary="List an app's previews (oldest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        previews: NamedDependency[PreviewService],
        releases: NamedDependency[ReleaseService],
        tenants: NamedDependency[TenantService],
        settings: NamedDependency[Settings],
        app: FromPath[str],
    ) -> PreviewList:
        return PreviewList(items=[_out(p, tenants, settings, releases) for p in previews.list(caller_tenant, app)])

    @endpoint("GET", "/{preview:str}", access=KeyScope.READ, errors=(404,), summary="Get a preview (by id, name or slug)")
    def get(
        self,
        caller_tenant: NamedDependency[str],
        previews: NamedDependency[PreviewService],
        releases: NamedDependency[ReleaseService],
        tenants: NamedDependency[TenantService],
        settings: NamedDependency[Settings],
        app: FromPath[str],
        preview: FromPath[str],
    ) -> PreviewOut:
        return _out(previews.get(caller_tenant, app, preview), tenants, settings, releases)

    @endpoint(
        "DELETE",
        "/{preview:str}",
        access=KeyScope.DEPLOY,
        errors=(404,),
        summary="Delete a preview (its route at once, then its containers and images)",
    )
    def remove(
        self,
        caller_tenant: NamedDependency[str],
        previews: NamedDependency[PreviewService],
        app: FromPath[str],
        preview: FromPath[str],
    ) -> None:
        previews.delete(caller_tenant, app, preview)

    @route(
        "POST",
        "/{preview:str}/deployments",
        access=KeyScope.DEPLOY,
        errors=(404, 413, 415),
        status_code=202,
        request_max_body_size=None,
        summary="Redeploy a preview: JSON {git: {url, ref}} or a tar.gz upload",
        operation_class=_RedeployOperation,
        description="A new deployment of the preview from another source; its env vars and expiry stay. 422 "
        "`quota-exceeded` once today's build minutes are used up. 202 with the preview and its new deployment.",
    )
    async def redeploy(
        self,
        request: Request[Any, Principal, Any],
        caller_tenant: NamedDependency[str],
        previews: NamedDependency[PreviewService],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        tenants: NamedDependency[TenantService],
        settings: NamedDependency[Settings],
        app: FromPath[str],
        preview: FromPath[str],
    ) -> Response[PreviewOut] | Response[Problem]:
        tenant_id = caller_tenant
        found = await anyio.to_thread.run_sync(previews.get, tenant_id, app, preview)  # 404 before reading any body
        await anyio.to_thread.run_sync(deployments.refuse_if_over_quota, tenant_id, found.app, "build")
        deployment_id = deployments.new_id()
        try:
            if media_type(request) == JSON:
                data: PreviewRedeploy = await json_body(request, PreviewRedeploy)
                source_kind, source = "git", await git_source(settings, data.git)
            else:
                await upload(request, deployments, settings, deployment_id)
                source_kind, source = "archive", {}
        except Refused as refused:
            return refused.response
        try:
            made = await anyio.to_thread.run_sync(
                previews.redeploy, tenant_id, app, found.app.id, deployment_id, source_kind, source
            )
        except BaseException:
            shutil.rmtree(deployments.workdir(deployment_id), ignore_errors=True)
            raise
        return _accepted(await anyio.to_thread.run_sync(_out, made, tenants, settings, releases))
