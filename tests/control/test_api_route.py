"""``moorage serve`` routes ``api.<base-domain>`` through Traefik to the address it serves on
(no Docker needed: the route is a file in Traefik's dynamic directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from control.bootstrap import bootstrap
from control.settings import Settings


def served_url(tmp_path: Path, host: str, **overrides: object) -> tuple[str | None, list[str]]:
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    services = bootstrap(Settings(data_dir=tmp_path, base_domain="apps.test", traefik_dynamic_dir=dynamic, **overrides))  # type: ignore[arg-type]
    try:
        hostname = services.route_api(host, 7811)
    finally:
        services.db.dispose()
    servers = [
        server["url"]
        for path in sorted(dynamic.glob("*.yml"))
        for service in yaml.safe_load(path.read_text())["http"]["services"].values()
        for server in service["loadBalancer"]["servers"]
    ]
    return hostname, servers


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:7811"),
        ("0.0.0.0", "http://127.0.0.1:7811"),  # all interfaces: Traefik, on this host, takes loopback
        ("::", "http://127.0.0.1:7811"),
        ("10.0.0.5", "http://10.0.0.5:7811"),
        ("::1", "http://[::1]:7811"),
    ],
)
def test_the_api_route_points_at_the_address_served_on(tmp_path: Path, host: str, url: str) -> None:
    assert served_url(tmp_path, host) == ("api.apps.test", [url])


def test_no_api_route_when_it_is_turned_off(tmp_path: Path) -> None:
    assert served_url(tmp_path, "127.0.0.1", api_route=False) == (None, [])


def test_no_route_directory_is_made_where_host_setup_made_none(tmp_path: Path) -> None:
    services = bootstrap(Settings(data_dir=tmp_path, traefik_dynamic_dir=tmp_path / "missing"))
    try:
        with pytest.raises(FileNotFoundError, match="no route directory"):
            services.route_api("127.0.0.1", 7811)
    finally:
        services.db.dispose()
    assert not (tmp_path / "missing").exists()  # /readyz still names the missing directory


def test_a_stopping_server_removes_its_route_but_not_another_servers(tmp_path: Path) -> None:
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    services = bootstrap(Settings(data_dir=tmp_path, traefik_dynamic_dir=dynamic))
    try:
        services.route_api("127.0.0.1", 7811)
        services.route_api("127.0.0.1", 7812)  # another server took the name since
        services.unroute_api("127.0.0.1", 7811)
        [route] = dynamic.glob("*.yml")
        assert "127.0.0.1:7812" in route.read_text()
        services.unroute_api("127.0.0.1", 7812)
        assert list(dynamic.glob("*.yml")) == []
    finally:
        services.db.dispose()
