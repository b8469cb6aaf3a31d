"""``GET /openapi.json``: the OpenAPI 3.1 document at a stable, short address.

Litestar serves it under ``/openapi/`` too; agents and the CLI use this one.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get


@get("/openapi.json", opt={"public": True}, include_in_schema=False, media_type="application/vnd.oai.openapi+json")
async def openapi_document(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return request.app.openapi_schema.to_schema()
