"""Releases (``GET /v1/apps/{app}/releases``) and rollback (``POST /v1/apps/{app}/rollback``).

A rollback is a new deployment that reuses an earlier release's image (no build) with that
release's port and health path, and the app's *current* env vars (values are not versioned).
It makes a new release (``rollback_of`` names the one it copies)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.deployments import DeploymentOut, accepted, deployment_out
from control.api.endpoints import Cursor, Limit, endpoint
from control.domain.deployments import DeploymentService
from control.domain.errors import Conflict
from control.domain.releases import ReleaseService
from control.security.scopes import KeyScope
from control.store.repositories.releases import Release


class ReleaseOut(msgspec.Struct):
    id: str
    name: Annotated[str, msgspec.Meta(description="v1, v2, ... per app")]
    current: Annotated[bool, msgspec.Meta(description="the release the app runs now")]
    image_id: str
    image_tag: str
    env_version: int
    port: int
    health_check_path: str
    deployment_id: str
    rollback_of: str | None
    created_at: datetime

    @classmethod
    def of(cls, r: Release, current_id: str | None) -> ReleaseOut:
        return cls(r.id, r.name, r.id == current_id, r.image_id, r.image_tag, r.env_version, r.port,
                   r.health_check_path, r.deployment_id, r.rollback_of, r.created_at)


class ReleaseList(msgspec.Struct):
    items: list[ReleaseOut]
    next_cursor: str | None


class RollbackIn(msgspec.Struct, forbid_unknown_fields=True):
    release: Annotated[str, msgspec.Meta(description="an earlier release of this app, e.g. 'v1'")]


class ReleaseController(Controller):
    path = "/v1/apps/{app:str}"
    tags = ("releases",)

    @endpoint("GET", "/releases", access=KeyScope.READ, errors=(404,), summary="List an app's releases (oldest first)")
    def list(
        self, caller_tenant: NamedDependency[str], releases: NamedDependency[ReleaseService], app: FromPath[str],
        limit: Annotated[int, Limit] = 50, cursor: Annotated[str | None, Cursor] = None,
    ) -> ReleaseList:
        page, current = releases.list(caller_tenant, app, limit=limit, cursor=cursor)
        return ReleaseList(items=[ReleaseOut.of(r, current) for r in page.items], next_cursor=page.next_cursor)

    @endpoint("POST", "/rollback", access=KeyScope.DEPLOY, errors=(404,), status_code=202,
              summary="Roll back to an earlier release (a new deployment reusing its image)")
    def rollback(
        self, caller_tenant: NamedDependency[str], releases: NamedDependency[ReleaseService],
        deployments: NamedDependency[DeploymentService], app: FromPath[str], data: JSONBody[RollbackIn],
    ) -> Response[DeploymentOut]:
        tenant_id = caller_tenant
        target_app = deployments.app(tenant_id, app)
        release = releases.by_name(tenant_id, app, data.release)
        _, current = releases.list(tenant_id, app, limit=1, cursor=None)
        if release.id == current:
            raise Conflict(f"{release.name} is already the current release; pick an earlier one from GET .../releases.", code="already-current")
        source = {"release": release.name, "release_id": release.id}
        created = deployments.create(tenant_id, target_app, deployments.new_id(), "rollback", source)
        return accepted(deployment_out(created, releases))
