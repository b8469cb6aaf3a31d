"""The two forms a source takes in a request body, read by the handler itself: JSON naming a
git source (``{"git": {"url", "ref"}, ...}``, at most 64 KiB), or a gzip-compressed tar
archive (``Content-Type: application/gzip``), streamed to disk and unpacked as a deployment's
upload is (``control.api.deployments``: the same limits and tar-slip hardening). Also the
OpenAPI ``requestBody`` that documents both, made from the JSON form's msgspec schema."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import msgspec
from litestar import Request, Response
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, RequestBody, Schema

from control.api.deployments import GZIP_TYPES, MAX_JSON_BYTES, GitSource, UploadTooLarge, _save_upload
from control.api.endpoints import IdempotentOperation
from control.api.problems import Problem, problem_response
from control.domain.deployments import DeploymentService
from control.domain.errors import Invalid
from control.domain.git_sources import GitHostRefused, check_git_source, resolve_git_host
from control.settings import Settings
from runtime.archive import ArchiveRejected, ExtractLimits, extract_tar_gz

JSON = "application/json"
_KEYWORDS = {
    "title": "title",
    "description": "description",
    "default": "default",
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "required": "required",
}


def _openapi(node: dict[str, Any], defs: dict[str, Any]) -> Schema:
    """msgspec's JSON Schema of a body as an OpenAPI schema (references inlined)."""
    if "$ref" in node:
        return _openapi(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    fields: dict[str, Any] = {ours: node[theirs] for theirs, ours in _KEYWORDS.items() if theirs in node}
    if "type" in node:
        fields["type"] = OpenAPIType(node["type"])
    if "properties" in node:
        fields["properties"] = {name: _openapi(sub, defs) for name, sub in node["properties"].items()}
    extra = node.get("additionalProperties")
    if extra is not None:
        fields["additional_properties"] = extra if isinstance(extra, bool) else _openapi(extra, defs)
    if "anyOf" in node:
        fields["any_of"] = [_openapi(sub, defs) for sub in node["anyOf"]]
    return Schema(**fields)


def source_body(json_body: type[Any], upload: str) -> RequestBody:
    schema = msgspec.json.schema(json_body)
    return RequestBody(
        required=True,
        content={
            "application/json": OpenAPIMediaType(schema=_openapi(schema, schema.get("$defs", {}))),
            "application/gzip": OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description=upload)
            ),
        },
    )


@dataclass
class SourceOperation(IdempotentOperation):
    """Documents the two body forms the handler reads itself (JSON, or a tar.gz upload)."""

    body: ClassVar[RequestBody]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = self.body


UPLOAD = "the source as a gzip-compressed tar archive (at most MOORAGE_MAX_UPLOAD_BYTES), unpacked as a deployment's"


class Refused(Exception):
    """The request is answered with ``response`` (a problem): nothing was made."""

    def __init__(self, response: Response[Problem]) -> None:
        self.response = response


async def json_body(request: Request[Any, Any, Any], kind: type[Any]) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise Refused(
                problem_response(request, 413, "payload-too-large", "A JSON request with a git source is at most 64 KiB.")
            )
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        at = str(exc).rpartition(" - at `$.")[2].rstrip("`") if " - at `$." in str(exc) else ""
        raise Refused(
            problem_response(
                request,
                422,
                "validation-failed",
                f'The request does not match the schema: {exc}. Send {{"git": {{"url": ..., "ref": ...}}, "ttl_s": ...}}.',
                errors=[{"field": at, "message": str(exc)}] if at else None,
            )
        ) from None
    except msgspec.DecodeError:
        raise Refused(problem_response(request, 400, "malformed-request", "The request body is not valid JSON.")) from None


async def git_source(settings: Settings, git: GitSource) -> dict[str, Any]:
    target = await anyio.to_thread.run_sync(
        partial(check_git_source, git.url, git.ref, allow_http=settings.git_allow_http, file_prefixes=settings.git_file_roots)
    )
    try:  # early answer for the caller; the job checks again right before cloning
        if not target.is_file:
            await anyio.to_thread.run_sync(resolve_git_host, target, settings.git_networks)
    except GitHostRefused as exc:
        raise Invalid(f"The git source is not acceptable: {exc}.", errors=[{"field": "git.url", "message": str(exc)}]) from None
    return {"url": git.url, "ref": git.ref}


async def upload(request: Request[Any, Any, Any], deployments: DeploymentService, settings: Settings, deployment_id: str) -> None:
    """The tar.gz body, streamed to disk (at most MOORAGE_MAX_UPLOAD_BYTES) and safely unpacked
    into the deployment's source directory, exactly as a deployment's upload."""
    too_large = f"Source archives are at most {settings.max_upload_bytes} bytes; trim the upload (e.g. exclude build outputs)."
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise Refused(problem_response(request, 413, "payload-too-large", too_large))
    workdir = deployments.workdir(deployment_id)
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / "upload.tar.gz"
    try:
        await _save_upload(request, archive, settings.max_upload_bytes)
        limits = ExtractLimits(
            max_bytes=settings.max_source_bytes, max_members=settings.max_source_entries, max_depth=settings.max_source_depth
        )
        await anyio.to_thread.run_sync(extract_tar_gz, archive, workdir / "src", limits)
    except UploadTooLarge:
        shutil.rmtree(workdir, ignore_errors=True)
        raise Refused(problem_response(request, 413, "payload-too-large", too_large)) from None
    except ArchiveRejected as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        detail = f"The source archive was refused: {exc}. Nothing was made; fix the archive and upload again."
        raise Refused(problem_response(request, 422, "archive-rejected", detail)) from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    archive.unlink(missing_ok=True)


def media_type(request: Request[Any, Any, Any]) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON and content_type not in GZIP_TYPES:
        detail = (
            'Send the source as a tar.gz body with Content-Type: application/gzip, or JSON {"git": {"url": ..., "ref": ...}}.'
        )
        raise Refused(problem_response(request, 415, "unsupported-media-type", detail))
    return content_type
