"""Apps: the named things a tenant deploys (metadata here; deployments build on it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from control.domain.errors import Conflict, Invalid, NotFound
from control.domain.names import check_dns_label
from control.domain.records import App, Page
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.apps import AppRepository

log = structlog.get_logger("moorage.apps")
BUILDERS = ("auto", "dockerfile", "nixpacks")


def _check_fields(fields: dict[str, Any]) -> None:
    builder = fields.get("builder")
    if builder is not None and builder not in BUILDERS:
        raise Invalid(
            f"'builder' must be one of {list(BUILDERS)}; got {builder!r}.",
            errors=[{"field": "builder", "message": f"one of {list(BUILDERS)}"}],
        )
    path = fields.get("health_check_path")
    if path is not None and not path.startswith("/"):
        raise Invalid(
            f"'health_check_path' must start with '/'; got {path!r}.",
            errors=[{"field": "health_check_path", "message": "must start with '/'"}],
        )


class AppService:
    def __init__(self, db: Store, unroute: Callable[[str], object] | None = None) -> None:
        self.db = db
        # Takes a deleted app's hostname off the router before the delete answers (by app id).
        self.unroute = unroute

    def create(self, tenant_id: str, name: str, **fields: Any) -> App:
        check_dns_label("name", name)
        _check_fields(fields)
        with self.db.write() as session:
            apps = AppRepository(session, tenant_id)
            if apps.name_taken(name):
                raise Conflict(f"An app named '{name}' already exists; pick another name.", code="name-taken")
            return apps.add(id=new_id("app"), name=name, **fields)

    def get(self, tenant_id: str, ref: str) -> App:
        with self.db.read() as session:
            app = AppRepository(session, tenant_id).get(ref)
        if app is None:
            raise NotFound.of("app", ref)
        return app

    def list(self, tenant_id: str, *, limit: int, cursor: str | None) -> Page[App]:
        with self.db.read() as session:
            return AppRepository(session, tenant_id).list(limit=limit, cursor=cursor)

    def update(self, tenant_id: str, ref: str, **fields: Any) -> App:
        _check_fields(fields)
        with self.db.write() as session:
            app = AppRepository(session, tenant_id).update(ref, **fields)
        if app is None:
            raise NotFound.of("app", ref)
        return app

    def delete(self, tenant_id: str, ref: str) -> App:
        with self.db.write() as session:
            app = AppRepository(session, tenant_id).delete(ref)
        if app is None:
            raise NotFound.of("app", ref)
        if self.unroute is not None:
            unroute = self.unroute

            def remove_route() -> None:  # once the delete is committed: a failed commit keeps the app routed
                try:
                    unroute(app.id)
                except Exception as exc:  # noqa: BLE001 (the row is gone: the reconciler removes the file on its next pass)
                    log.warning("app_route_not_removed", app_id=app.id, error=f"{type(exc).__name__}: {exc}")

            self.db.after_commit(remove_route)
        return app
