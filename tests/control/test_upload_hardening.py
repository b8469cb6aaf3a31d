"""Upload hardening: every unsafe or oversized source archive is refused with a problem+json
4xx, and nothing is written outside the deployment's build directory (nor left inside it)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from control.settings import Settings
from tests.conftest import Caller

GZIP = {"Content-Type": "application/gzip"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        base_domain="apps.test",
        max_upload_bytes=64 * 1024,
        max_source_bytes=1024 * 1024,
        job_workers=0,
    )


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def file(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def bomb() -> bytes:
    """A tar of 64 MiB of zeros: about 64 KiB once gzipped."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = 64 * 1024 * 1024
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as gz:
        gz.write(info.tobuf())
        chunk = bytes(1024 * 1024)
        for _ in range(64):
            gz.write(chunk)
        gz.write(bytes(1024))  # end-of-archive blocks
    return raw.getvalue()


CASES = {
    "dotdot": tar_gz(file("Dockerfile", b"FROM x"), file("../../escaped.txt")),
    "absolute": tar_gz(file("/tmp/moorage-absolute-escape.txt")),
    "symlink-out": tar_gz(link("evil", "../../../../etc"), file("evil/escaped.txt")),
    "symlink-absolute": tar_gz(link("passwd", "/etc/passwd")),
    "hardlink-out": tar_gz(link("shadow", "../../etc/shadow", hard=True)),
    "bomb": bomb(),
    "not-gzip": b"this is not an archive",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsafe_archives_are_refused_and_nothing_escapes(tenant: Caller, settings: Settings, tmp_path: Path, case: str) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    before = set(tmp_path.rglob("*"))
    r = tenant.post("/v1/apps/web/deployments", content=CASES[case], headers=GZIP)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "archive-rejected" and r.json()["request_id"]
    assert tenant.get("/v1/apps/web/deployments").json()["items"] == []
    deployments = settings.data_dir / "deployments"
    assert not deployments.exists() or list(deployments.iterdir()) == []  # the build dir is gone too
    new = set(tmp_path.rglob("*")) - before
    assert not [p for p in new if "escaped" in p.name or p.name in {"passwd", "shadow", "zeros.bin"}]
    assert not Path("/tmp/moorage-absolute-escape.txt").exists()


def test_an_oversized_upload_is_413_whether_declared_or_streamed(tenant: Caller, settings: Settings) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    big = tar_gz(file("blob.bin", os.urandom(100 * 1024)))  # random bytes do not compress
    assert len(big) > settings.max_upload_bytes
    r = tenant.post("/v1/apps/web/deployments", content=big, headers=GZIP)
    assert r.status_code == 413 and r.json()["code"] == "payload-too-large"

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    r = tenant.post("/v1/apps/web/deployments", content=chunks(), headers=GZIP)
    assert r.status_code == 413 and r.json()["code"] == "payload-too-large"
    assert not (settings.data_dir / "deployments").exists() or list((settings.data_dir / "deployments").iterdir()) == []


def test_a_good_archive_is_extracted_and_queued(tenant: Caller, settings: Settings) -> None:
    tenant.post("/v1/apps", json={"name": "web"})
    good = tar_gz(
        file("Dockerfile", b"FROM moorage/busybox:latest\n"), file("app/main.py", b"print(1)\n"), link("app/alias.py", "main.py")
    )
    r = tenant.post("/v1/apps/web/deployments", content=good, headers=GZIP)
    assert r.status_code == 202, r.text
    src = settings.data_dir / "deployments" / r.json()["id"] / "src"
    assert (src / "Dockerfile").read_bytes().startswith(b"FROM") and (src / "app" / "alias.py").is_symlink()
    assert r.json()["status"] == "queued" and r.json()["source"] == {"kind": "archive"}
