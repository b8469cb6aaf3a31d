"""Managed databases, built once per process: the services the API uses, and the
job kinds registered on the deploy queue's workers (one durable queue, one worker pool)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from control.domain.backups import BackupService
from control.domain.databases import DatabaseConfig, DatabaseService
from control.domain.links import LinkService
from control.domain.tenants import TenantService
from control.jobs.databases import DatabaseJobs, DatabaseRuntime
from control.jobs.wiring import Deploys
from control.security.keyring import ReloadingKeyring
from control.settings import Settings
from control.store.database import Store


@dataclass(frozen=True)
class ManagedDatabases:
    databases: DatabaseService
    links: LinkService
    backups: BackupService
    jobs: DatabaseJobs

    @classmethod
    def build(cls, settings: Settings, db: Store, keyring: ReloadingKeyring, links: LinkService, deploys: Deploys) -> ManagedDatabases:
        config = DatabaseConfig(
            max_databases=settings.database_max_per_tenant, max_memory_mb=settings.database_max_memory_mb,
            backup_retention=settings.database_backup_retention,
            volume_grace=timedelta(seconds=settings.database_volume_grace_s), max_attempts=settings.job_max_attempts,
        )
        databases = DatabaseService(db, keyring, deploys.queue, config, settings.data_dir)
        backups = BackupService(databases, default_retention=settings.database_backup_retention)
        jobs = DatabaseJobs(databases, backups, TenantService(db), DatabaseRuntime(deploys.runtime),
                            provision_timeout_s=float(settings.database_provision_timeout_s),
                            sweep_interval_s=float(settings.database_purge_interval_s))
        deploys.workers.handlers.update(jobs.handlers())  # before the workers start (app startup)
        deploys.queue.on_give_up.update(jobs.give_up_hooks())
        deploys.reconciler.also_sweep("database containers", jobs.remove_orphan_containers)
        return cls(databases, links, backups, jobs)

    def start(self) -> None:
        self.jobs.start()

    def stop(self) -> None:
        self.jobs.stop()
