"""Apps: the named things a tenant deploys (metadata here; deployments build on it)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from control.domain.compute import ComputeQuota
from control.domain.errors import Conflict, Invalid, NotFound
from control.domain.names import check_dns_label
from control.domain.records import App, Page
from control.domain.teardown import Teardown
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.apps import PREVIEW, AppRepository
from control.store.repositories.volumes import VolumeRepository

BUILDERS = ("auto", "dockerfile", "nixpacks")
PREVIEW_SEPARATOR = "--"  # <app>--<slug>: the name of one of the app's previews


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
    def __init__(
        self,
        db: Store,
        teardown: Teardown | None = None,
        *,
        max_replicas: int = 10,
        rescaled: Callable[[], None] | None = None,
        quota: ComputeQuota | None = None,
    ) -> None:
        self.db = db
        self.teardown = teardown  # what runs for a deleted app: its route, containers, images
        self.max_replicas = max_replicas
        self.rescaled = rescaled  # a changed replica count: the reconciler applies it at once
        self.quota = quota  # the tenant's compute quotas (apps; replicas, CPU, memory of running apps)
        # Told of each preview deleted (DELETE, its TTL, its app's delete), in the delete's
        # transaction: what a preview holds besides its app row goes with it (forked databases).
        self.preview_deleted: Callable[[App], None] | None = None

    def create(self, tenant_id: str, name: str, **fields: Any) -> App:
        check_dns_label("name", name)
        if PREVIEW_SEPARATOR in name:
            raise Invalid(
                f"App names may not contain '{PREVIEW_SEPARATOR}': '<app>{PREVIEW_SEPARATOR}<slug>' is the form reserved "
                f"for previews (POST /v1/apps/{{app}}/previews); got {name!r}. Pick a name without it.",
                errors=[{"field": "name", "message": f"'{PREVIEW_SEPARATOR}' is reserved for previews"}],
            )
        _check_fields(fields)
        self._check_replicas(fields)
        with self.db.write() as session:
            apps = AppRepository(session, tenant_id)
            if apps.name_taken(name):
                raise Conflict(f"An app named '{name}' already exists; pick another name.", code="name-taken")
            if self.quota is not None:
                self.quota.check_new_app(session, tenant_id)
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
        self._check_replicas(fields)
        with self.db.write() as session:
            apps = AppRepository(session, tenant_id)
            before = apps.get(ref)
            if before is not None and fields.get("replicas", 1) > 1:
                volumes = VolumeRepository(session, tenant_id).for_app(before.id)
                if volumes:
                    raise Conflict(
                        f"App '{before.name}' has volume(s) {', '.join(v.name for v in volumes)}, and a volume has one "
                        "writer at a time: it runs 1 replica. Delete its volumes to scale it out.",
                        code="replicas-with-volume",
                    )
            replicas = fields.get("replicas")
            if before is not None and self.quota is not None and replicas is not None and replicas > before.replicas:
                self.quota.check_scale_up(session, tenant_id, before.id, before.name, replicas)
            app = apps.update(ref, **fields)
        if app is None or before is None:
            raise NotFound.of("app", ref)
        if app.replicas != before.replicas and self.rescaled is not None:
            self.db.after_commit(self.rescaled)
        return app

    def _check_replicas(self, fields: dict[str, Any]) -> None:
        replicas = fields.get("replicas")
        if replicas is not None and not 1 <= replicas <= self.max_replicas:
            raise Invalid(
                f"'replicas' must be between 1 and {self.max_replicas} (MOORAGE_MAX_REPLICAS); got {replicas}.",
                errors=[{"field": "replicas", "message": f"1..{self.max_replicas}"}],
            )

    def delete(self, tenant_id: str, ref: str, *, purge: bool = False) -> App:
        """The app and everything recorded about it; once that is committed, its route comes
        off the router before the answer, and its containers and images stop within about a
        second. An app with volumes needs ``purge``: their data goes too (right after its containers).
        Its previews go with it, each torn down as an app."""
        with self.db.write() as session:
            apps = AppRepository(session, tenant_id)
            found = apps.get(ref)
            volumes = VolumeRepository(session, tenant_id).for_app(found.id) if found else []
            if found is not None and volumes and not purge:
                names = ", ".join(f"'{v.name}' ({v.mount_path}, {v.size_mb} MiB)" for v in volumes)
                raise Conflict(
                    f"App '{found.name}' has volume(s) {names}: deleting it would delete their data. Delete it with "
                    f"?purge=true to remove the volumes too, or delete them first with DELETE /v1/apps/{found.name}/volumes/{{name}}.",
                    code="app-has-volumes",
                )
            if found is None:
                raise NotFound.of("app", ref)
            for preview in apps.previews_of(found.id):
                self._delete_row(session, preview, [])
            return self._delete_row(session, found, [v.id for v in volumes])

    def delete_preview(self, preview: App) -> App:
        """A preview (by its record: the previews service has found it), torn down as an app.
        ``NotFound`` if it is gone already (a DELETE and its TTL at once)."""
        with self.db.write() as session:
            return self._delete_row(session, preview, [])

    def _delete_row(self, session: Session, app: App, volume_ids: builtins.list[str]) -> App:
        apps = AppRepository(session, app.tenant_id, previews=True)
        found = apps.get(app.id)
        if found is None:
            raise NotFound.of("app", app.name)
        if found.kind == PREVIEW and self.preview_deleted is not None:
            self.preview_deleted(found)  # before its row goes: what it holds (its links) is still there to read
        deployment_ids = apps.deployment_ids(app.id)
        deleted = apps.delete(app.id)
        if deleted is None:
            raise NotFound.of("app", app.name)
        if self.teardown is not None:
            teardown = self.teardown
            # Only after the commit: a delete that fails to commit keeps the app serving.
            self.db.after_commit(lambda: teardown.app_deleted(deleted, deployment_ids, volume_ids))
        return deleted
