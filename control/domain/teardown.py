"""What must come down outside the database when an app or a tenant is deleted: routes,
containers, images, volumes (an app deleted with ``?purge=true``), networks. The domain says when (once the delete is committed); the
runtime side (``control.jobs.teardown``) says how."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from control.domain.records import App, Tenant


class Teardown(Protocol):
    def app_deleted(self, app: App, deployment_ids: Collection[str], volume_ids: Collection[str] = ()) -> None:
        """The app's route before the delete answers; its containers and its images (those of
        ``deployment_ids``) within about a second, then its volumes' storage."""

    def tenant_deleted(self, tenant: Tenant) -> None:
        """What the tenant's apps left behind, and its network."""
