"""Releases: immutable records of what ran (image + env version + config snapshot),
numbered per app (``v1``, ``v2``...), and the app's current release (desired state).

Only some releases keep their image (``kept_releases``): each app's newest ones and its
current one. The reconciler removes every other image, and a rollback to a release whose
image is not kept is refused up front (409 ``release-image-pruned``), never a failed deploy."""

from __future__ import annotations

import builtins  # `list` in a class body with a list() method names the method, not the type
from collections.abc import Sequence

from control.domain.errors import Conflict, Invalid, NotFound
from control.domain.names import RELEASE_NAME
from control.domain.records import App, DesiredApp, Page, Release, ReleaseConfig
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.apps import AppRepository
from control.store.repositories.releases import AppRuntimeRepository, ReleaseRepository


def release_number(name: str) -> int:
    match = RELEASE_NAME.pattern.fullmatch(name)
    if match is None:
        raise Invalid(
            f"'release' must be a release name like 'v1'; got {name!r}.",
            errors=[{"field": "release", "message": "a release name: v1, v2, ..."}],
        )
    return int(match.group(1))


MAX_NAMED_TARGETS = 10  # kept releases a refused rollback names (the newest)


class ReleaseService:
    def __init__(self, db: Store, *, kept_releases: int = 5) -> None:
        self.db = db
        self.kept_releases = kept_releases  # per app, the newest releases whose images stay

    def _app(self, tenant_id: str, app_ref: str) -> App:
        with self.db.read() as session:
            app = AppRepository(session, tenant_id).get(app_ref)
        if app is None:
            raise NotFound.of("app", app_ref)
        return app

    def list(self, tenant_id: str, app_ref: str, *, limit: int, cursor: str | None) -> tuple[Page[Release], str | None, set[str]]:
        """A page of the app's releases, its current release's id and the image ids it keeps."""
        app = self._app(tenant_id, app_ref)
        with self.db.read() as session:
            page = ReleaseRepository(session, tenant_id).list(app.id, limit=limit, cursor=cursor)
            runtime = AppRuntimeRepository(session)
            return page, runtime.current_release_id(app.id), runtime.kept_images(self.kept_releases, app.id)

    def rollback_target(self, tenant_id: str, app_ref: str, name: str) -> Release:
        """The release a rollback may go back to: not the current one (409 ``already-current``),
        and one whose image is kept (409 ``release-image-pruned``, naming those that are)."""
        release = self.by_name(tenant_id, app_ref, name)
        with self.db.read() as session:
            runtime = AppRuntimeRepository(session)
            current = runtime.current_release_id(release.app_id)
            kept = runtime.kept_images(self.kept_releases, release.app_id)
            targets = [r.name for r in ReleaseRepository(session, tenant_id).with_images(release.app_id, kept) if r.id != current]
        if release.id == current:
            raise Conflict(
                f"{release.name} is already the current release; pick an earlier one from GET .../releases.",
                code="already-current",
            )
        if release.image_id not in kept:
            named = ", ".join(targets[-MAX_NAMED_TARGETS:]) or "none besides the current one"
            raise Conflict(
                f"{release.name}'s image was pruned from this host: only each app's {self.kept_releases} newest "
                f"releases and its current one keep their images (MOORAGE_KEPT_RELEASES), so nothing was deployed. "
                f"Roll back to a release that still has its image ({named}; `image_kept: true` in "
                f"GET /v1/apps/{app_ref}/releases), or deploy {release.name}'s source again (POST /v1/apps/{app_ref}/deployments).",
                code="release-image-pruned",
            )
        return release

    def by_name(self, tenant_id: str, app_ref: str, name: str) -> Release:
        number = release_number(name)
        app = self._app(tenant_id, app_ref)
        with self.db.read() as session:
            release = ReleaseRepository(session, tenant_id).by_number(app.id, number)
        if release is None:
            raise NotFound.of("release", name)
        return release

    def get(self, release_id: str) -> Release | None:
        with self.db.read() as session:
            return ReleaseRepository(session, None).get(release_id)

    def for_deployment(self, deployment_id: str) -> Release | None:
        with self.db.read() as session:
            return ReleaseRepository(session, None).by_deployment(deployment_id)

    def create(
        self,
        *,
        tenant_id: str,
        app_id: str,
        deployment_id: str,
        image_id: str,
        image_tag: str,
        env_version: int,
        port: int,
        health_check_path: str,
        rollback_of: str | None = None,
        config: ReleaseConfig | None = None,
    ) -> Release:
        """One release per deployment: a retried job gets the release it already made."""
        with self.db.write() as session:
            repo = ReleaseRepository(session, None)
            existing = repo.by_deployment(deployment_id)
            if existing is not None:
                return existing
            return repo.add(
                id=new_id("rel"),
                tenant_id=tenant_id,
                app_id=app_id,
                deployment_id=deployment_id,
                image_id=image_id,
                image_tag=image_tag,
                env_version=env_version,
                port=port,
                health_check_path=health_check_path,
                rollback_of=rollback_of,
                config=config.to_json() if config is not None else None,
            )

    def discard_unreleased(self, deployment_id: str) -> bool:
        """The release of a deployment that never went live goes: release numbers count what
        served (the next release takes the number back)."""
        with self.db.write() as session:
            repo = ReleaseRepository(session, None)
            release = repo.by_deployment(deployment_id)
            return release is not None and repo.remove_unless_current(release.id)

    def make_current(self, release: Release, containers: Sequence[tuple[str, str]]) -> None:
        """``release`` is what the app runs now, in ``containers`` (``(id, name)`` per replica)."""
        with self.db.write() as session:
            AppRuntimeRepository(session).set(
                app_id=release.app_id, tenant_id=release.tenant_id, release_id=release.id, containers=containers
            )

    def set_containers(self, app_id: str, containers: Sequence[tuple[str, str]]) -> None:
        with self.db.write() as session:
            AppRuntimeRepository(session).set_containers(app_id, containers)

    def desired(self, app_id: str | None = None) -> builtins.list[DesiredApp]:
        with self.db.read() as session:
            return AppRuntimeRepository(session).desired(app_id)

    def kept_images(self) -> set[str]:
        """Image ids some app still needs: its ``kept_releases`` newest releases' and its current one's."""
        with self.db.read() as session:
            return AppRuntimeRepository(session).kept_images(self.kept_releases)

    def any_desired(self) -> bool:
        with self.db.read() as session:
            return AppRuntimeRepository(session).any_exist()
