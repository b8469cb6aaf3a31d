"""Deployments of an app (``/v1/apps/{app}/deployments``), the releases they make
(``GET /v1/apps/{app}/releases``) and rollback (``POST /v1/apps/{app}/rollback``).

``POST`` takes either the source as a gzip-compressed tar archive (``Content-Type:
application/gzip``, the raw archive as the body; streamed to disk, at most
``MOORAGE_MAX_UPLOAD_BYTES``, then safely extracted) or ``application/json``
``{"git": {"url": "https://...", "ref": "main"}}`` (a public host: see ``control.domain.git_sources``). It answers 202 with the
deployment to poll (and ``Location``); its log streams at ``.../{deployment}/logs``.

A rollback is a new deployment that reuses an earlier release's image (no build) with that
release's port, health path and config: the env vars and database links it was made with
(each release keeps its vars sealed as they were). Once it is live, the app's env vars are
that release's again. It makes a new release (``rollback_of`` names the one it copies); its
``source.config`` says whose config it restores, by names and versions, never values.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from functools import partial
from typing import Annotated, Any

import anyio
import anyio.to_thread
import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control.api.endpoints import Cursor, Limit, endpoint, route
from control.api.problems import Problem, problem_response
from control.domain.deployments import DeploymentService
from control.domain.errors import Invalid
from control.domain.git_sources import (
    GitHostRefused,
    check_git_source,
    resolve_git_host,
)
from control.domain.records import Deployment, Release, ReleaseConfig
from control.domain.releases import ReleaseService
from control.security.principal import Principal
from control.security.scopes import KeyScope
from control.settings import Settings
from runtime.archive import ArchiveRejected, ExtractLimits, extract_tar_gz

GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/x-tar+gzip", "application/tar+gzip"})
MAX_JSON_BYTES = 64 * 1024


class GitSource(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[
        str,
        msgspec.Meta(
            description=(
                "https:// repository URL of a public host, no credentials (http:// only where the operator allows it). "
                "ssh:// and git:// are refused, and so is a host resolving to a loopback, private, link-local, "
                "multicast or reserved address unless the operator allows that network (MOORAGE_GIT_ALLOWED_NETWORKS): 422. "
                "file:///path is refused unless the path, with '..' and symlinks resolved, lies under a directory the "
                "operator allows (MOORAGE_GIT_FILE_PREFIXES): 422, nothing fetched."
            )
        ),
    ]
    ref: Annotated[str, msgspec.Meta(description="branch, tag or commit")] = "main"


class GitDeploy(msgspec.Struct, forbid_unknown_fields=True):
    git: GitSource


class Transition(msgspec.Struct, omit_defaults=True):
    status: str
    at: str
    reason: str | None = None


class DeploymentOut(msgspec.Struct):
    id: str
    app_id: str
    status: Annotated[str, msgspec.Meta(description="queued | building | releasing | running | failed | cancelled")]
    source: dict[str, Any]
    builder: str | None
    release: Annotated[str | None, msgspec.Meta(description="the release this deployment made (v1, v2, ...)")]
    image: str | None
    reason: Annotated[str | None, msgspec.Meta(description="why it failed or was cancelled")]
    cancel_requested: bool
    timings: Annotated[dict[str, float], msgspec.Meta(description="seconds: build_s, start_s, health_s, route_s")]
    transitions: list[Transition]
    created_at: datetime
    updated_at: datetime
    logs_url: str

    @classmethod
    def of(cls, d: Deployment, release_name: str | None) -> DeploymentOut:
        return cls(
            id=d.id,
            app_id=d.app_id,
            status=d.status,
            source={"kind": d.source_kind, **{k: v for k, v in d.source.items() if k != "release_id"}},
            builder=d.builder,
            release=release_name,
            image=d.image,
            reason=d.reason,
            cancel_requested=d.cancel_requested,
            timings=d.timings,
            transitions=[msgspec.convert(t, Transition) for t in d.transitions],
            created_at=d.created_at,
            updated_at=d.updated_at,
            logs_url=f"/v1/apps/{d.app_id}/deployments/{d.id}/logs",
        )


class DeploymentList(msgspec.Struct):
    items: list[DeploymentOut]
    next_cursor: str | None


def deployment_out(d: Deployment, releases: ReleaseService) -> DeploymentOut:
    release = releases.get(d.release_id) if d.release_id else None
    return DeploymentOut.of(d, release.name if release else None)


def accepted(d: DeploymentOut) -> Response[DeploymentOut]:
    return Response(d, status_code=202, headers={"Location": f"/v1/apps/{d.app_id}/deployments/{d.id}"})


class UploadTooLarge(Exception):
    pass


async def _save_upload(request: Request[Any, Any, Any], target: Any, limit: int) -> None:
    size = 0
    async with await anyio.open_file(target, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge
            await f.write(chunk)


class DeploymentController(Controller):
    path = "/v1/apps/{app:str}/deployments"
    tags = ("deployments",)

    @route(
        "POST",
        "/",
        access=KeyScope.DEPLOY,
        errors=(404, 409, 413, 415),
        status_code=202,
        request_max_body_size=None,
        summary="Deploy: upload a tar.gz (application/gzip) or JSON {git: {url, ref}}",
        description="422 `quota-exceeded` (before the body is read, and again as the deployment is written) when an "
        "app's first deploy would take the tenant past `max_replicas`, `max_cpu` or `max_memory_mb`, or when today's "
        "(UTC) build minutes are used up; 409 `volume-full` while a measured volume is over its size. Nothing is made.",
    )
    async def create(
        self,
        request: Request[Any, Principal, Any],
        caller_tenant: NamedDependency[str],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        settings: NamedDependency[Settings],
        app: FromPath[str],
    ) -> Response[DeploymentOut] | Response[Problem]:
        tenant_id = caller_tenant
        target = await anyio.to_thread.run_sync(deployments.app, tenant_id, app)  # 404 before reading any body
        await anyio.to_thread.run_sync(deployments.refuse_if_volume_full, tenant_id, target)  # and 409 before an upload
        await anyio.to_thread.run_sync(deployments.refuse_if_over_quota, tenant_id, target, "build")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            return await self._from_git(request, deployments, releases, settings, tenant_id, target)
        if content_type not in GZIP_TYPES:
            detail = (
                'Send the source as a tar.gz body with Content-Type: application/gzip, or JSON {"git": {"url": ..., "ref": ...}}.'
            )
            return problem_response(request, 415, "unsupported-media-type", detail)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            return problem_response(
                request,
                413,
                "payload-too-large",
                f"Source archives are at most {settings.max_upload_bytes} bytes; trim the upload (e.g. exclude build outputs).",
            )
        deployment_id = deployments.new_id()
        workdir = deployments.workdir(deployment_id)
        workdir.mkdir(parents=True, exist_ok=True)
        upload = workdir / "upload.tar.gz"
        try:
            await _save_upload(request, upload, settings.max_upload_bytes)
            limits = ExtractLimits(
                max_bytes=settings.max_source_bytes, max_members=settings.max_source_entries, max_depth=settings.max_source_depth
            )
            await anyio.to_thread.run_sync(extract_tar_gz, upload, workdir / "src", limits)
        except UploadTooLarge:
            shutil.rmtree(workdir, ignore_errors=True)
            return problem_response(
                request,
                413,
                "payload-too-large",
                f"Source archives are at most {settings.max_upload_bytes} bytes; trim the upload (e.g. exclude build outputs).",
            )
        except ArchiveRejected as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            return problem_response(
                request,
                422,
                "archive-rejected",
                f"The source archive was refused: {exc}. Nothing was deployed; fix the archive and upload again.",
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        upload.unlink(missing_ok=True)
        try:
            created = await anyio.to_thread.run_sync(deployments.create, tenant_id, target, deployment_id, "archive", {})
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return accepted(deployment_out(created, releases))

    async def _from_git(
        self,
        request: Request[Any, Any, Any],
        deployments: DeploymentService,
        releases: ReleaseService,
        settings: Settings,
        tenant_id: str,
        target: Any,
    ) -> Response[Any]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                return problem_response(request, 413, "payload-too-large", "A JSON deployment request is at most 64 KiB.")
        try:
            data = msgspec.json.decode(body, type=GitDeploy)
        except msgspec.ValidationError as exc:
            return problem_response(
                request,
                422,
                "validation-failed",
                f'The request does not match the schema: {exc}. Send {{"git": {{"url": ..., "ref": ...}}}}.',
            )
        except msgspec.DecodeError:
            return problem_response(request, 400, "malformed-request", "The request body is not valid JSON.")
        git_target = await anyio.to_thread.run_sync(
            partial(check_git_source, data.git.url, data.git.ref, allow_http=settings.git_allow_http,
                    file_prefixes=settings.git_file_roots)
        )  # fmt: skip
        try:  # early answer for the caller; the job checks again right before cloning
            if not git_target.is_file:
                await anyio.to_thread.run_sync(resolve_git_host, git_target, settings.git_networks)
        except GitHostRefused as exc:
            raise Invalid(
                f"The git source is not acceptable: {exc}.", errors=[{"field": "git.url", "message": str(exc)}]
            ) from None
        deployment_id = deployments.new_id()
        source = {"url": data.git.url, "ref": data.git.ref}
        created = await anyio.to_thread.run_sync(deployments.create, tenant_id, target, deployment_id, "git", source)
        return accepted(deployment_out(created, releases))

    @endpoint("GET", "/", access=KeyScope.READ, errors=(404,), summary="List an app's deployments (oldest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> DeploymentList:
        page = deployments.list(caller_tenant, app, limit=limit, cursor=cursor)
        return DeploymentList(items=[deployment_out(d, releases) for d in page.items], next_cursor=page.next_cursor)

    @endpoint("GET", "/{deployment:str}", access=KeyScope.READ, errors=(404,), summary="Get a deployment (poll its status)")
    def get(
        self,
        caller_tenant: NamedDependency[str],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        deployment: FromPath[str],
    ) -> DeploymentOut:
        return deployment_out(deployments.get(caller_tenant, app, deployment), releases)

    @endpoint(
        "POST",
        "/{deployment:str}/cancel",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=202,
        summary="Cancel a deployment (at once if queued, else at its next step)",
    )
    def cancel(
        self,
        caller_tenant: NamedDependency[str],
        deployments: NamedDependency[DeploymentService],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        deployment: FromPath[str],
    ) -> DeploymentOut:
        return deployment_out(deployments.cancel(caller_tenant, app, deployment), releases)


# -- releases and rollback -------------------------------------------------------------------
class ConfigVarOut(msgspec.Struct):
    name: str
    version: Annotated[int, msgspec.Meta(description="the var's version when the release was made")]
    secret: bool


class ConfigLinkOut(msgspec.Struct):
    env_name: str
    database_id: str


class ReleaseConfigOut(msgspec.Struct):
    """What a release was made with besides its image (names and versions, never values)."""

    env_version: int
    vars: list[ConfigVarOut]
    links: list[ConfigLinkOut]

    @classmethod
    def of(cls, config: ReleaseConfig) -> ReleaseConfigOut:
        return cls(
            config.env_version,
            [ConfigVarOut(v.name, v.version, v.secret) for v in config.vars],
            [ConfigLinkOut(link.env_name, link.database_id) for link in config.links],
        )


class ReleaseOut(msgspec.Struct):
    id: str
    name: Annotated[str, msgspec.Meta(description="v1, v2, ... per app")]
    current: Annotated[bool, msgspec.Meta(description="the release the app runs now")]
    image_kept: Annotated[
        bool,
        msgspec.Meta(
            description=(
                "its image is still on the host, so it is a rollback target: the app's MOORAGE_KEPT_RELEASES "
                "newest releases and its current one keep theirs. false: the image was pruned; a rollback to it "
                "is refused with 409 release-image-pruned (deploy that version's source again)"
            )
        ),
    ]
    image_id: str
    image_tag: str
    env_version: int
    port: int
    health_check_path: str
    deployment_id: str
    rollback_of: str | None
    created_at: datetime
    config: Annotated[
        ReleaseConfigOut | None,
        msgspec.Meta(description="the env vars and links it was made with; null for releases made before releases kept it"),
    ]

    @classmethod
    def of(cls, r: Release, current_id: str | None, kept_images: set[str]) -> ReleaseOut:
        return cls(
            r.id,
            r.name,
            r.id == current_id,
            r.image_id in kept_images,
            r.image_id,
            r.image_tag,
            r.env_version,
            r.port,
            r.health_check_path,
            r.deployment_id,
            r.rollback_of,
            r.created_at,
            ReleaseConfigOut.of(r.config) if r.config else None,
        )


class ReleaseList(msgspec.Struct):
    items: list[ReleaseOut]
    next_cursor: str | None


class RollbackIn(msgspec.Struct, forbid_unknown_fields=True):
    release: Annotated[str, msgspec.Meta(description="an earlier release of this app, e.g. 'v1'")]


class ReleaseController(Controller):
    path = "/v1/apps/{app:str}"
    tags = ["releases"]  # noqa: RUF012 (Litestar's own attribute)

    @endpoint("GET", "/releases", access=KeyScope.READ, errors=(404,), summary="List an app's releases (oldest first)")
    def list(
        self,
        caller_tenant: NamedDependency[str],
        releases: NamedDependency[ReleaseService],
        app: FromPath[str],
        limit: Annotated[int, Limit] = 50,
        cursor: Annotated[str | None, Cursor] = None,
    ) -> ReleaseList:
        page, current, kept = releases.list(caller_tenant, app, limit=limit, cursor=cursor)
        return ReleaseList(items=[ReleaseOut.of(r, current, kept) for r in page.items], next_cursor=page.next_cursor)

    @endpoint(
        "POST",
        "/rollback",
        access=KeyScope.DEPLOY,
        errors=(404,),
        status_code=202,
        summary="Roll back to an earlier release (a new deployment reusing its image)",
        description=(
            "409 `already-current` for the release the app runs now; 409 `release-image-pruned` for a release "
            "whose image was pruned (`image_kept: false` in the releases listing): the detail names the releases "
            "that are still rollback targets."
        ),
    )
    def rollback(
        self,
        caller_tenant: NamedDependency[str],
        releases: NamedDependency[ReleaseService],
        deployments: NamedDependency[DeploymentService],
        app: FromPath[str],
        data: JSONBody[RollbackIn],
    ) -> Response[DeploymentOut]:
        tenant_id = caller_tenant
        target_app = deployments.app(tenant_id, app)
        release = releases.rollback_target(tenant_id, app, data.release)
        restores = (
            f"{release.name}'s: {release.config.summary()}"
            if release.config
            else f"none: {release.name} was made before releases kept their config, so today's is used"
        )
        source = {"release": release.name, "release_id": release.id, "config": restores}
        created = deployments.create(tenant_id, target_app, deployments.new_id(), "rollback", source)
        return accepted(deployment_out(created, releases))
