"""``moorage register``, ``moorage recover`` (no API key: the token or code is the
credential), and the operator's side: ``moorage registration-tokens ...`` and
``moorage tenants list|approve|reject|recovery-code``.

``register`` and ``recover`` print the API's object (``tenant``, ``key`` with its
``token``, ``recovery_code``, ...) plus ``written_to``: with ``--output-file F`` the new
key is also written to F (mode 0600, never over an existing file), ready for
``MOORAGE_API_KEY_FILE=F``. ``--token -`` / ``--code -`` read the secret from stdin, so
it stays out of shell history and process listings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from control.cli.client import exit_codes
from control.cli.client.http import ApiClient
from control.cli.client.render import emit

TOKEN_COLUMNS = ("id", "name", "status", "used", "uses", "approval", "expires_at")
TENANT_COLUMNS = ("id", "name", "status", "created_at")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    signup = commands.add_parser("register", parents=[common], help="register a tenant with a registration token (no API key)")
    signup.add_argument("--token", required=True, help="the registration token (mrg_reg_...); '-' reads it from stdin")
    signup.add_argument("--tenant", required=True, help="the new tenant's name (a DNS label)")
    signup.add_argument("--display-name", default="", help="for people (default: the name)")
    signup.add_argument("--output-file", type=Path, help="also write the new admin key here (0600; never overwritten)")
    signup.set_defaults(api=run_register)

    recover = commands.add_parser("recover", parents=[common], help="a new admin key with the tenant's recovery code")
    recover.add_argument("--tenant", required=True, help="the tenant's name")
    recover.add_argument("--code", required=True, help="the recovery code (mrg_rec_...); '-' reads it from stdin")
    recover.add_argument("--revoke-keys", action="store_true", help="also revoke every other key of the tenant")
    recover.add_argument("--output-file", type=Path, help="also write the new admin key here (0600; never overwritten)")
    recover.set_defaults(api=run_recover)

    tokens = commands.add_parser("registration-tokens", help="operator: tokens people register tenants with")
    sub = tokens.add_subparsers(dest="registration_tokens_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", parents=[common], help="issue a token (its secret is shown once)")
    create.add_argument("--uses", type=int, default=1, help="tenants it may register (1)")
    create.add_argument("--expires-at", help="RFC 3339 time it stops working (default: 7 days from now)")
    create.add_argument("--approval", action="store_true", help="tenants made with it wait for approval (pending)")
    create.add_argument("--name", default="", help="a label for people")
    create.add_argument(
        "--default-limits", help='JSON, e.g. \'{"rate": {"tenant_quota": 100}, "databases": {"max_databases": 1}}\''
    )
    create.set_defaults(api=run_token_create)
    listing = sub.add_parser("list", parents=[common], help="list tokens (never their secrets)")
    listing.set_defaults(api=run_token_list)
    for name, helptext, handler in (("get", "show one token", run_token_get), ("revoke", "revoke a token", run_token_revoke)):
        one = sub.add_parser(name, parents=[common], help=helptext)
        one.add_argument("token_id", help="the token's id (rtk_...)")
        one.set_defaults(api=handler)

    tenants = commands.add_parser("tenants", help="operator: tenants, and approving self-registered ones")
    tenant_sub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    tenant_list = tenant_sub.add_parser("list", parents=[common], help="list tenants")
    tenant_list.add_argument("--status", choices=["active", "suspended", "pending"], help="only tenants in this state")
    tenant_list.set_defaults(api=run_tenant_list)
    for name, helptext in (
        ("approve", "approve a pending tenant: its keys start working"),
        ("reject", "reject a pending tenant: it is removed with its keys"),
        ("recovery-code", "issue a new recovery code (shown once); lifts a recovery lock"),
    ):
        one = tenant_sub.add_parser(name, parents=[common], help=helptext)
        one.add_argument("tenant_id", help="the tenant's id (ten_...)")
        one.set_defaults(api=run_tenant_action, action=name)


def _secret(value: str) -> str:
    return sys.stdin.readline().strip() if value == "-" else value


def _refuse_existing(path: Path | None) -> bool:
    if path is not None and path.exists():
        message = {"error": "file-exists", "detail": f"{path} exists; refusing to overwrite a key file."}
        print(json.dumps(message), file=sys.stderr)
        return True
    return False


def _write_key(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")


def _shown_once(args: argparse.Namespace, body: dict[str, Any]) -> int:
    if args.output_file is not None:
        _write_key(args.output_file, body["key"]["token"])
    emit({**body, "written_to": str(args.output_file) if args.output_file else None}, as_json=args.json)
    return exit_codes.OK


def run_register(args: argparse.Namespace, api: ApiClient) -> int:
    if _refuse_existing(args.output_file):
        return exit_codes.CONFLICT
    request = {"tenant_name": args.tenant, "token": _secret(args.token), "display_name": args.display_name}
    return _shown_once(args, api.post("/v1/register", request))


def run_recover(args: argparse.Namespace, api: ApiClient) -> int:
    if _refuse_existing(args.output_file):
        return exit_codes.CONFLICT
    request = {"tenant": args.tenant, "recovery_code": _secret(args.code), "revoke_keys": args.revoke_keys}
    return _shown_once(args, api.post("/v1/recover", request))


def run_token_create(args: argparse.Namespace, api: ApiClient) -> int:
    body: dict[str, Any] = {"uses": args.uses, "approval": args.approval, "name": args.name}
    if args.expires_at:
        body["expires_at"] = args.expires_at
    if args.default_limits:
        try:
            body["default_limits"] = json.loads(args.default_limits)
        except json.JSONDecodeError as exc:
            print(json.dumps({"error": "usage", "detail": f"--default-limits is not JSON: {exc}"}), file=sys.stderr)
            return exit_codes.USAGE
    emit(api.post("/v1/registration-tokens", body), as_json=args.json)
    return exit_codes.OK


def run_token_list(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.paginate("/v1/registration-tokens"), as_json=args.json, columns=TOKEN_COLUMNS)
    return exit_codes.OK


def run_token_get(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.get(f"/v1/registration-tokens/{args.token_id}"), as_json=args.json)
    return exit_codes.OK


def run_token_revoke(args: argparse.Namespace, api: ApiClient) -> int:
    api.delete(f"/v1/registration-tokens/{args.token_id}")
    emit({"revoked": args.token_id}, as_json=args.json)
    return exit_codes.OK


def run_tenant_list(args: argparse.Namespace, api: ApiClient) -> int:
    params = {"status": args.status} if args.status else {}
    emit(api.paginate("/v1/tenants", **params), as_json=args.json, columns=TENANT_COLUMNS)
    return exit_codes.OK


def run_tenant_action(args: argparse.Namespace, api: ApiClient) -> int:
    emit(api.post(f"/v1/tenants/{args.tenant_id}/{args.action}"), as_json=args.json)
    return exit_codes.OK
