"""Tenants: created, suspended and removed by operators."""

from __future__ import annotations

from control.domain.errors import Conflict, NotFound
from control.domain.names import DISPLAY_NAME, check_tenant_name
from control.domain.recent_keys import recent_keys
from control.domain.records import Page, Tenant
from control.domain.teardown import Teardown
from control.ids import new_id
from control.store.database import Store
from control.store.repositories.tenants import TenantRepository


class TenantService:
    def __init__(self, db: Store, teardown: Teardown | None = None) -> None:
        self.db = db
        self.teardown = teardown  # what outlives the rows: its network, images its apps left
        # Tenant names never change, and ids are never reused: a name once read stays true.
        self._names: dict[str, str] = {}

    def create(self, name: str, display_name: str = "") -> Tenant:
        check_tenant_name("name", name)
        DISPLAY_NAME.check("display_name", display_name)
        with self.db.write() as session:
            tenants = TenantRepository(session)
            if tenants.name_taken(name):
                raise Conflict(f"A tenant named '{name}' already exists; pick another name.", code="name-taken")
            return tenants.add(id=new_id("ten"), name=name, display_name=display_name or name)

    def get(self, tenant_id: str) -> Tenant:
        with self.db.read() as session:
            tenant = TenantRepository(session).get(tenant_id)
        if tenant is None:
            raise NotFound.of("tenant", tenant_id)
        return tenant

    def name(self, tenant_id: str) -> str:
        known = self._names.get(tenant_id)
        if known is None:
            known = self._names[tenant_id] = self.get(tenant_id).name
        return known

    def _forget_name(self, tenant_id: str) -> None:
        self._names.pop(tenant_id, None)

    def known_name(self, tenant_id: str) -> str | None:
        """The tenant's name if this process has read it before (no database), else None."""
        return self._names.get(tenant_id)

    def list(self, *, limit: int, cursor: str | None, status: str | None = None) -> Page[Tenant]:
        with self.db.read() as session:
            return TenantRepository(session).list(limit=limit, cursor=cursor, status=status)

    def names(self) -> set[str]:
        with self.db.read() as session:
            return TenantRepository(session).names()

    def ids_by_name(self) -> dict[str, str]:
        with self.db.read() as session:
            return TenantRepository(session).ids_by_name()

    def ids(self) -> set[str]:
        with self.db.read() as session:
            return TenantRepository(session).ids()

    def set_status(self, tenant_id: str, status: str) -> Tenant:
        with self.db.write() as session:
            tenant = TenantRepository(session).set_status(tenant_id, status)
        if tenant is None:
            raise NotFound.of("tenant", tenant_id)
        recent_keys(self.db).forget_tenant(tenant_id)  # a suspension applies to the next request
        return tenant

    def approve(self, tenant_id: str) -> Tenant:
        """A self-registered tenant waiting for approval becomes active: its keys work."""
        with self.db.write() as session:
            tenants = TenantRepository(session)
            _pending(tenants.get(tenant_id), tenant_id, "approved")
            tenant = tenants.set_status(tenant_id, "active")
            assert tenant is not None
        recent_keys(self.db).forget_tenant(tenant_id)
        return tenant

    def reject(self, tenant_id: str) -> Tenant:
        """A tenant waiting for approval is removed with its keys and recovery code (it can
        own nothing else: its keys never worked); its name is free again."""
        with self.db.write() as session:
            tenants = TenantRepository(session)
            tenant = _pending(tenants.get(tenant_id), tenant_id, "rejected")
            tenants.delete(tenant_id)
        recent_keys(self.db).forget_tenant(tenant_id)
        return tenant

    def delete(self, tenant_id: str) -> None:
        """An empty tenant: apps deleted, databases purged (their volumes follow their own
        grace period first). Once committed, its network and anything its apps left go too."""
        with self.db.write() as session:
            tenants = TenantRepository(session)
            tenant = tenants.get(tenant_id)
            if tenant is None:
                raise NotFound.of("tenant", tenant_id)
            owned = {kind: n for kind, n in tenants.owned(tenant_id).items() if n}
            if owned:
                listed = ", ".join(f"{n} {kind}(s)" for kind, n in owned.items())
                raise Conflict(
                    f"Tenant still owns {listed}; delete them first (databases with ?purge=true) so "
                    "nothing is lost or left running by accident.",
                    code="tenant-not-empty",
                )
            tenants.delete(tenant_id)
        recent_keys(self.db).forget_tenant(tenant_id)
        if self.teardown is not None:
            teardown = self.teardown
            self.db.after_commit(lambda: teardown.tenant_deleted(tenant))
        # The name stays known until then: the apps' teardowns, still running, look it up.
        self.db.after_commit(lambda: self._forget_name(tenant_id))


def _pending(tenant: Tenant | None, tenant_id: str, verb: str) -> Tenant:
    if tenant is None:
        raise NotFound.of("tenant", tenant_id)
    if not tenant.is_pending:
        raise Conflict(
            f"Tenant '{tenant.name}' is {tenant.status}, not pending: only a tenant awaiting approval can be {verb}. "
            "Use suspend/resume for an active tenant.",
            code="tenant-not-pending",
        )
    return tenant
