"""Taking down what a deleted app or tenant had running, once its delete is committed.

The route goes first and at once, before the delete answers: from then on the hostname is
unknown to Traefik (404) and can never reach a container that gets the app's old address.
Containers and images go right after, on a small pool of threads, so the answer does not
wait for gVisor to stop a sandbox: once the router has let go of the hostname (a request
already routed to a container being killed would hang, not fail), about a second in all. Should the process die in
between, or Docker be down, the reconciler removes what is left on its next passes: the
routes, containers, networks and images that no live app or tenant accounts for.

Containers and images are matched by the deleted app's deployment ids (their names and tags
carry one), never by its name alone: an app created again under the same name keeps its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor, wait

import structlog

from control.domain.records import App, Tenant
from control.jobs.runtime_port import AppRuntime

log = structlog.get_logger("moorage.teardown")


class RuntimeTeardown:
    """The ``control.domain.teardown.Teardown`` of the app runtime port."""

    def __init__(
        self,
        runtime: AppRuntime,
        tenant_name: Callable[[str], str],
        *,
        unroute_wait_s: float = 5.0,
        workers: int = 2,
        kept_images: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.runtime = runtime
        # Images another app's release or a snapshot still needs (a fork runs its source's image).
        self.kept_images = kept_images
        self.unroute_wait_s = unroute_wait_s
        self.tenant_name = tenant_name
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="moorage-teardown")
        # Each tenant's app teardowns under way: its own teardown waits for them, or its
        # network would still have their containers on it.
        self._pending: dict[str, list[Future[object]]] = {}
        self._guard = threading.Lock()

    def app_deleted(self, app: App, deployment_ids: Collection[str], volume_ids: Collection[str] = ()) -> None:
        """After the app's delete committed: its route now, the rest in the background."""
        routed = bool(self._quietly("route", app.id, lambda: self.runtime.remove_route(app.id)))
        ids, tenant, volumes = frozenset(deployment_ids), self.tenant_name(app.tenant_id), tuple(volume_ids)
        future = self._pool.submit(
            self._quietly, "containers and images", app.id, lambda: self._app_leftovers(app, tenant, ids, routed, volumes)
        )
        with self._guard:
            pending = [f for f in self._pending.get(app.tenant_id, []) if not f.done()]
            self._pending[app.tenant_id] = [*pending, future]

    def tenant_deleted(self, tenant: Tenant) -> None:
        """After the (empty) tenant's delete committed: once its apps' teardowns are done,
        whatever they left, then its network."""
        with self._guard:
            apps = self._pending.pop(tenant.id, [])

        def leftovers() -> list[str]:
            # Started before this task (the pool takes tasks in order): waiting never deadlocks.
            wait(apps, timeout=60)
            return self._tenant_leftovers(tenant)

        self._pool.submit(self._quietly, "network and images", tenant.id, leftovers)

    def drain(self) -> None:
        """Wait for the teardowns under way (a clean shutdown, a test)."""
        pool, self._pool = self._pool, ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="moorage-teardown")
        pool.shutdown(wait=True)

    # -- inside -----------------------------------------------------------------------------
    def _app_leftovers(
        self, app: App, tenant: str, deployment_ids: frozenset[str], routed: bool, volume_ids: tuple[str, ...] = ()
    ) -> list[str]:
        if routed and self.runtime.wait_unrouted(tenant, app.name, self.unroute_wait_s) is None:
            log.warning("teardown_route_still_served", app_id=app.id, waited_s=self.unroute_wait_s)
        removed = []
        for container in self.runtime.owned_apps(tenant=tenant, app=app.name):
            mounts_ours = bool(set(container.volumes) & set(volume_ids))
            if (mounts_ours or any(dep in container.name for dep in deployment_ids)) and self.runtime.remove(container.id):
                removed.append(container.name)
        for volume_id in volume_ids:  # after the containers: a volume in use cannot go
            if self.runtime.remove_volume(volume_id):
                removed.append(f"volume {volume_id}")
        kept = set(self.kept_images())
        for image in self.runtime.tenant_images(app.tenant_id):
            if image.id not in kept and image.deployment_ids() & deployment_ids and self.runtime.remove_image(image.id):
                removed.append(image.tags[0])
        return removed

    def _tenant_leftovers(self, tenant: Tenant) -> list[str]:
        removed = []
        for container in self.runtime.owned_apps(tenant=tenant.name):
            if self.runtime.remove(container.id):
                removed.append(container.name)
        for image in self.runtime.tenant_images(tenant.id):
            if self.runtime.remove_image(image.id):
                removed.append(image.tags[0])
        for layer in self.runtime.build_layers(tenant.id):  # failed builds' steps: only its id says whose they are
            if self.runtime.remove_image(layer.id):
                removed.append(f"build layer {layer.id[:19]}")
        if self.runtime.remove_network(tenant.name):
            removed.append(f"network of {tenant.name}")
        return removed

    @staticmethod
    def _quietly(what: str, subject: str, action: Callable[[], object]) -> object:
        try:
            done = action()
        except Exception as exc:  # noqa: BLE001 (the delete is committed; the reconciler finishes the job)
            log.warning("teardown_incomplete", what=what, subject=subject, error=f"{type(exc).__name__}: {exc}")
            return None
        if isinstance(done, list) and done:
            log.info("torn_down", what=what, subject=subject, removed=done)
        return done
