"""``moorage admin ...``: operator commands that work on the database directly."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from control.cli.client import exit_codes
from control.domain.errors import Conflict
from control.security.master_keys import (
    KeySource,
    MasterKey,
    MasterKeyError,
    generate_master_key,
    parse_keys,
    write_key_file,
)
from control.settings import Settings

if TYPE_CHECKING:
    from control.bootstrap import Services
    from control.cli.client.http import ApiClient
    from control.domain.rotation import RotationService


class CommandError(Exception):
    def __init__(self, message: str, *, code: str, exit_code: int = exit_codes.FAILED) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = commands.add_parser("admin", help="operator commands run on the server host")
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")
    bootstrap = sub.add_parser("bootstrap", help="create the first operator key and print it once")
    bootstrap.add_argument("--name", default="bootstrap", help="a label for the key")
    bootstrap.add_argument("--output-file", type=Path, help="also write the key to this file (mode 0600)")
    bootstrap.add_argument("--another", action="store_true", help="mint one more operator key")
    bootstrap.set_defaults(run=run_bootstrap)

    generate = sub.add_parser("generate-master-key", help="make a new secrets master key (KEY_ID:BASE64)")
    generate.add_argument("--id", dest="key_id", help="key id (default mk-YYYYMMDD-random)")
    generate.add_argument("--output-file", type=Path, help="write a new key file (mode 0600) instead of printing the key")
    generate.set_defaults(run=run_generate_master_key)

    rotate = sub.add_parser("rotate-key", help="add a new active master key and reseal every sealed value under it")
    rotate.add_argument("--new-key-file", type=Path, help="take the new key from this file instead of generating one")
    rotate.add_argument("--reencrypt-only", action="store_true", help="add no key; reseal under the current active key")
    rotate.add_argument("--batch-size", type=int, default=200, help="values per write transaction (default 200)")
    rotate.add_argument("--retire", metavar="KEY_ID", help="instead: remove an old key no value uses any more")
    rotate.set_defaults(run=run_rotate_key)

    retire = sub.add_parser("retire-key", help="remove an old master key, refused while any value still uses it")
    retire.add_argument("retire", metavar="KEY_ID")
    retire.set_defaults(run=run_retire_key)

    usage = sub.add_parser("master-keys", help="list master key ids, the active one, and how many values each seals")
    usage.set_defaults(run=run_master_keys)

    check = sub.add_parser(
        "check-host", help="can this host run deployments? each missing component and what to do (the checks of /readyz)"
    )
    check.add_argument("--json", action="store_true", help="print {ready, checks, problems} as one JSON document")
    check.set_defaults(run=run_check_host)

    from control.cli.client.commands import common_options  # the API client's flags: URL, operator key, retries

    health = sub.add_parser(
        "health",
        parents=[common_options()],
        help="how the platform is doing (GET /v1/operator/health, operator key): each component ok|warn|fail "
        "with its figure, as JSON; exit 6 when one fails",
    )
    health.set_defaults(api=run_health)


def _write_secret_file(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CommandError(
            f"{path} exists; refusing to overwrite a key file.", code="file-exists", exit_code=exit_codes.CONFLICT
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")


def run_bootstrap(args: argparse.Namespace) -> int:
    from control.bootstrap import bootstrap
    from control.logging import configure_logging
    from control.store import migrate

    settings = Settings.from_env()
    configure_logging("warning", settings.log_format)  # stdout carries the result
    services = bootstrap(settings)
    try:
        migrate.upgrade(services.db.engine)
        if args.output_file is not None and args.output_file.exists():
            raise CommandError(
                f"{args.output_file} exists; refusing to overwrite a key file.", code="file-exists", exit_code=exit_codes.CONFLICT
            )
        try:
            issued = services.keys.bootstrap_operator(args.name, another=args.another)
        except Conflict as exc:
            raise CommandError(exc.detail, code=exc.code, exit_code=exit_codes.CONFLICT) from None
        if args.output_file is not None:
            _write_secret_file(args.output_file, issued.token)
        print(
            json.dumps(
                {
                    "key_id": issued.key.id,
                    "token": issued.token,
                    "note": "Shown once. Store it now; only its hash is kept.",
                    "written_to": str(args.output_file) if args.output_file else None,
                },
                indent=2,
            )
        )
    finally:
        services.db.dispose()
    return 0


# -- secrets master keys -----------------------------------------------------------------
# Progress goes to stderr as JSON lines, the summary to stdout as one JSON document.


@contextmanager
def _services() -> Iterator[Services]:
    from control.bootstrap import bootstrap
    from control.logging import configure_logging
    from control.store import migrate

    settings = Settings.from_env()
    configure_logging("warning", settings.log_format)
    services = bootstrap(settings)
    try:
        migrate.upgrade(services.db.engine)
        yield services
    except MasterKeyError as exc:
        raise CommandError(str(exc), code="master-keys-unusable") from None
    finally:
        services.db.dispose()


@contextmanager
def _key_file_lock(source: KeySource) -> Iterator[None]:
    """One rotation or retirement at a time: both rewrite the key file."""
    if not source.is_file:
        yield
        return
    assert source.file is not None
    source.file.parent.mkdir(parents=True, exist_ok=True)
    with open(source.file.with_name(source.file.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def run_generate_master_key(args: argparse.Namespace) -> int:
    try:
        key = generate_master_key(args.key_id)
    except MasterKeyError as exc:
        raise CommandError(str(exc), code="invalid-key-id", exit_code=exit_codes.USAGE) from None
    if args.output_file is None:
        print(json.dumps({"key_id": key.id, "line": key.line(), "note": "Put the line in the key file or MOORAGE_MASTER_KEYS."}))
        return 0
    if args.output_file.exists():
        raise CommandError(
            f"{args.output_file} exists; refusing to overwrite a key file.", code="file-exists", exit_code=exit_codes.CONFLICT
        )
    write_key_file(args.output_file, [key])
    print(json.dumps({"key_id": key.id, "written_to": str(args.output_file)}))
    return 0


def _add_active_key(source: KeySource, new_key_file: Path | None) -> MasterKey:
    if not source.is_file:
        raise CommandError(
            "Master keys come from MOORAGE_MASTER_KEYS, which this command cannot edit. Put the new key first "
            "there (`moorage admin generate-master-key`), restart, then run `rotate-key --reencrypt-only`.",
            code="keys-from-environment",
            exit_code=exit_codes.USAGE,
        )
    assert source.file is not None
    keys = source.load()
    if new_key_file is not None and not new_key_file.is_file():
        raise CommandError(f"--new-key-file {new_key_file} does not exist.", code="file-not-found", exit_code=exit_codes.USAGE)
    new = parse_keys(new_key_file.read_text(), origin=str(new_key_file))[0] if new_key_file else generate_master_key()
    if any(k.id == new.id for k in keys):
        raise CommandError(f"Key id {new.id!r} is already in {source.file}.", code="key-exists", exit_code=exit_codes.CONFLICT)
    write_key_file(source.file, [new, *keys])
    return new


def _rotation(services: Services) -> RotationService:
    from control.domain.rotation import RotationService

    return RotationService(services.db, services.keyring)


def run_rotate_key(args: argparse.Namespace) -> int:
    if args.retire:
        return run_retire_key(args)
    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1.", code="usage", exit_code=exit_codes.USAGE)
    source = KeySource.of(Settings.from_env())
    with _key_file_lock(source), _services() as services:
        added = None if args.reencrypt_only else _add_active_key(source, args.new_key_file)
        active = services.keyring.reload().active_id
        rotation = _rotation(services)
        resealed, failed, batches = 0, [], 0
        for column in rotation.columns:  # every sealed column, one short write transaction per batch
            after_id = ""
            while (batch := rotation.reseal_batch(column, after_id=after_id, limit=args.batch_size)).last_id is not None:
                batches += 1
                resealed += batch.resealed
                failed += batch.failed
                after_id = batch.last_id
                progress = {"batch": batches, "column": column.label, "resealed": resealed, "failed": len(failed)}
                print(json.dumps(progress), file=sys.stderr, flush=True)
        per_column = rotation.usage_by_column()
        usage = rotation.key_usage()
    print(
        json.dumps(
            {
                "active_key": active,
                "added_key": added.id if added else None,
                "resealed": resealed,
                "failed": failed,
                "values_per_key": usage,
                "values_per_column": per_column,
                "retirable": [k for k in services.keyring.current().key_ids if k != active and not usage.get(k)],
                "next": "moorage admin retire-key KEY_ID for each retirable key"
                if not failed
                else "Some values could not be opened (altered or missing key): set them again, then rerun.",
            }
        )
    )
    return 0 if not failed else 1


def run_retire_key(args: argparse.Namespace) -> int:
    key_id: str = args.retire
    source = KeySource.of(Settings.from_env())
    with _key_file_lock(source), _services() as services:
        keys = source.load()
        if all(k.id != key_id for k in keys):
            raise CommandError(f"No master key {key_id!r} in {source.describe()}.", code="key-not-found")
        if keys[0].id == key_id:
            raise CommandError(
                f"{key_id!r} is the active key; rotate to a new one first.", code="key-active", exit_code=exit_codes.CONFLICT
            )
        # Every sealed column counts: a key some database password still needs must stay.
        users = {label: n for label, per_key in _rotation(services).usage_by_column().items() if (n := per_key.get(key_id, 0))}
        if users:
            where = ", ".join(f"{label}: {n}" for label, n in users.items())
            raise CommandError(
                f"{sum(users.values())} value(s) are still sealed under {key_id!r} ({where}); "
                "run `moorage admin rotate-key --reencrypt-only` first.",
                code="key-in-use",
                exit_code=exit_codes.CONFLICT,
            )
        if source.is_file:
            assert source.file is not None
            write_key_file(source.file, [k for k in keys if k.id != key_id])
    removed = source.is_file
    print(
        json.dumps(
            {
                "retired": key_id,
                "removed_from": source.describe() if removed else None,
                "note": None if removed else "No value uses it: remove it from MOORAGE_MASTER_KEYS and restart.",
            }
        )
    )
    return 0


def run_master_keys(_args: argparse.Namespace) -> int:
    source = KeySource.of(Settings.from_env())
    with _services() as services:
        keyring = services.keyring.current()
        rotation = _rotation(services)
        per_column = rotation.usage_by_column()
        usage = rotation.key_usage()
    keys = [{"id": k, "active": k == keyring.active_id, "values": usage.get(k, 0)} for k in keyring.key_ids]
    unknown = {k: n for k, n in usage.items() if k not in keyring.key_ids}
    print(
        json.dumps(
            {
                "source": source.describe(),
                "keys": keys,
                "values_per_column": per_column,
                "values_under_unknown_keys": unknown,
            }
        )
    )
    return 0


def run_health(_args: argparse.Namespace, api: ApiClient) -> int:
    """The server's own view (its reconciler, breakers and queue), so it asks the API."""
    report = api.get("/v1/operator/health")
    print(json.dumps(report))
    return exit_codes.UNAVAILABLE if report.get("status") == "fail" else exit_codes.OK


def run_check_host(args: argparse.Namespace) -> int:
    """Exit 0 when every component is there, 6 (unavailable) when one is missing."""
    from control.jobs.host_targets import host_targets
    from runtime.host_check import check_host

    findings = check_host(host_targets(Settings.from_env()))
    problems = [f for f in findings if not f.ok]
    if args.json:
        print(
            json.dumps(
                {
                    "ready": not problems,
                    "checks": {f.component: f.detail for f in findings},
                    "problems": [{"component": f.component, "detail": f.detail, "remedy": f.remedy} for f in problems],
                }
            )
        )
    else:
        for f in findings:
            print(f"ok       {f.component}" if f.ok else f"MISSING  {f.component}: {f.detail}\n         -> {f.remedy}")
    return exit_codes.OK if not problems else exit_codes.UNAVAILABLE
