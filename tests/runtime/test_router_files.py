"""Route files and the Traefik static config (no Docker needed)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from runtime.resilience import BreakerRegistry
from runtime.router import AppRoute, Backend, DomainRoute, Router, atomic_write, legacy_owners
from runtime.settings import RuntimeSettings
from runtime.traefik import TraefikStaticOptions, render_static_config, static_config


def router(tmp_path: Path, **kw: object) -> Router:
    s = RuntimeSettings(base_domain="apps.example.com", traefik_dynamic_dir=tmp_path, **kw)  # type: ignore[arg-type]
    return Router(s, registry=BreakerRegistry())


def test_one_file_per_app_with_host_rule_and_service(tmp_path: Path) -> None:
    r = router(tmp_path)
    path = r.write(
        AppRoute(
            "acme",
            "web",
            [Backend("172.18.0.5", 8000), Backend("172.18.0.6", 8000)],
            extra_hosts=["www.acme.com"],
            health_path="/healthz",
            key="app_web1",
        )
    )
    assert path == tmp_path / "app_web1.yml"
    cfg = yaml.safe_load(path.read_text())
    router_cfg = cfg["http"]["routers"]["app_web1"]
    assert router_cfg["rule"] == "Host(`web.acme.apps.example.com`) || Host(`www.acme.com`)"
    assert router_cfg["entryPoints"] == ["web"] and "tls" not in router_cfg
    lb = cfg["http"]["services"]["app_web1"]["loadBalancer"]
    assert lb["servers"] == [{"url": "http://172.18.0.5:8000"}, {"url": "http://172.18.0.6:8000"}]
    assert lb["healthCheck"]["path"] == "/healthz"
    assert r.list() == ["app_web1"]
    assert r.remove("app_web1") and not path.exists()
    assert not r.remove("app_web1")
    assert r.list() == []


def test_names_that_joined_to_one_key_get_files_of_their_own(tmp_path: Path) -> None:
    """`rt-v` + `w--app` and `rt-v--w` + `app` were both `rt-v--w--app`: one overwrote the other."""
    r = router(tmp_path)
    victim = r.write(AppRoute("rt-v--w", "app", [Backend("10.0.0.2", 80)], key="app_victim"))
    attacker = r.write(AppRoute("rt-v", "w--app", [Backend("10.0.0.3", 80)], key="app_attacker"))
    assert victim != attacker and r.list() == ["app_attacker", "app_victim"]
    rule = yaml.safe_load(victim.read_text())["http"]["routers"]["app_victim"]["rule"]
    assert rule == "Host(`app.rt-v--w.apps.example.com`)"
    assert yaml.safe_load(victim.read_text())["http"]["services"]["app_victim"]["loadBalancer"]["servers"] == [
        {"url": "http://10.0.0.2:80"}
    ]


@pytest.mark.parametrize("key", ["acme--web", "../x", "a.b", "a/b", "", "App_1", "x\n", "a" * 101])
def test_route_keys_are_ids_only(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        router(tmp_path).write(AppRoute("acme", "web", [Backend("10.0.0.2", 80)], key=key))
    assert list(tmp_path.iterdir()) == []


def test_owned_lists_only_the_files_an_owner_wrote(tmp_path: Path) -> None:
    r = router(tmp_path)
    r.write(AppRoute("acme", "web", [Backend("10.0.0.2", 80)], key="app_a"), owner="mrg-1")
    r.write(AppRoute("acme", "api", [Backend("10.0.0.3", 80)], key="app_b"), owner="mrg-2")
    r.write(AppRoute("acme", "db", [Backend("10.0.0.4", 80)], key="app_c"))
    (tmp_path / "acme--old.yml").write_text("http: {}\n")
    assert r.owned("mrg-1") == ["app_a"] and r.owned("mrg-2") == ["app_b"]
    assert r.list() == ["app_a", "app_b", "app_c"] and r.legacy() == ["acme--old"]
    assert yaml.safe_load((tmp_path / "app_a.yml").read_text())["http"]["routers"]["app_a"]  # still plain YAML
    with pytest.raises(ValueError):
        r.write(AppRoute("acme", "web", [Backend("10.0.0.2", 80)], key="app_d"), owner="x\ny")


def test_with_a_cert_resolver_the_platform_hostname_is_served_over_https_beside_http(tmp_path: Path) -> None:
    r = router(tmp_path, tls_cert_resolver="letsencrypt")
    cfg = yaml.safe_load(r.write(AppRoute("acme", "web", [Backend("10.0.0.2", 80)], key="app_1")).read_text())
    plain, secure = cfg["http"]["routers"]["app_1"], cfg["http"]["routers"]["app_1_tls"]
    assert "tls" not in plain and plain["entryPoints"] == ["web"]  # the swap's checks go over HTTP
    assert secure["tls"] == {"certResolver": "letsencrypt"} and secure["entryPoints"] == ["websecure"]
    assert secure["rule"] == plain["rule"] and secure["service"] == plain["service"] == "app_1"


def test_with_a_wildcard_certificate_the_https_router_uses_the_default_certificate(tmp_path: Path) -> None:
    r = router(tmp_path, tls_wildcard=True)
    cfg = yaml.safe_load(r.write(AppRoute("acme", "web", [Backend("10.0.0.2", 80)], key="app_1")).read_text())
    assert cfg["http"]["routers"]["app_1_tls"]["tls"] == {}
    pair = {"certFile": "/etc/moorage/wild.pem", "keyFile": "/etc/moorage/wild.key"}
    assert r.render_platform_tls(Path(pair["certFile"]), Path(pair["keyFile"])) == {
        "tls": {"certificates": [pair], "stores": {"default": {"defaultCertificate": pair}}}
    }


def test_a_dead_backend_costs_a_one_second_dial_and_a_retry_on_the_next_not_a_hung_request(tmp_path: Path) -> None:
    r = router(tmp_path, tls_cert_resolver="letsencrypt")
    route = AppRoute("acme", "web", [Backend("10.0.0.2", 80), Backend("10.0.0.3", 80)], key="app_1", middlewares=["app_1_limit"])
    cfg = yaml.safe_load(r.write(route).read_text())["http"]
    assert cfg["serversTransports"] == {"app_1": {"forwardingTimeouts": {"dialTimeout": "1s"}}}
    assert cfg["services"]["app_1"]["loadBalancer"]["serversTransport"] == "app_1"
    assert cfg["middlewares"] == {"app_1_retry": {"retry": {"attempts": 3}}}
    # On both routers, and before the app's own middlewares, so a retry passes through them once.
    assert cfg["routers"]["app_1"]["middlewares"] == cfg["routers"]["app_1_tls"]["middlewares"] == ["app_1_retry", "app_1_limit"]
    domain = r.render_domain(
        DomainRoute("dom_1", "shop.example.com", "app_1", hsts=True), cert_resolver="le", web="web", websecure="websecure"
    )
    assert domain["http"]["routers"]["dom_1"]["middlewares"] == ["app_1_retry", "dom_1_hsts"]
    plain = r.render_domain(
        DomainRoute("dom_1", "shop.example.com", "app_1"), cert_resolver=None, web="web", websecure="websecure"
    )
    assert plain["http"]["routers"]["dom_1"]["middlewares"] == ["app_1_retry"]


def test_without_tls_settings_there_is_no_https_router(tmp_path: Path) -> None:
    cfg = yaml.safe_load(router(tmp_path).write(AppRoute("acme", "web", [Backend("10.0.0.2", 80)], key="app_1")).read_text())
    assert list(cfg["http"]["routers"]) == ["app_1"]


@pytest.mark.parametrize("host", ["evil`) || Host(`x", "a b.com", "-bad-.com", "x" * 300])
def test_injection_into_rule_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError):
        router(tmp_path).write(AppRoute("acme", "web", [Backend("10.0.0.2", 80)], extra_hosts=[host], key="app_1"))
    assert list(tmp_path.iterdir()) == []


def test_bad_names_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        router(tmp_path).write(AppRoute("../etc", "web", [Backend("10.0.0.2", 80)], key="app_1"))
    with pytest.raises(ValueError):
        router(tmp_path).write(AppRoute("acme", "web", [], key="app_1"))


def test_atomic_write_readers_never_see_partial_files(tmp_path: Path) -> None:
    target = tmp_path / "app.yml"
    bodies = ["a" * 200_000 + "\n", "b" * 300_000 + "\n"]
    atomic_write(target, bodies[0])
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(target.read_text())

    t = threading.Thread(target=reader)
    t.start()
    for i in range(200):
        atomic_write(target, bodies[i % 2])
    stop.set()
    t.join()
    assert seen <= set(bodies)
    assert [p.name for p in tmp_path.iterdir()] == ["app.yml"], "temp files left behind"
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "app.yml"
    atomic_write(target, "old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["app.yml"]


def test_static_config_never_exposes_api(tmp_path: Path) -> None:
    cfg = static_config(TraefikStaticOptions(dynamic_dir=tmp_path))
    assert "api" not in cfg
    assert cfg["entryPoints"]["ping"]["address"].startswith("127.0.0.1:")
    assert cfg["providers"]["file"] == {"directory": str(tmp_path), "watch": True}
    assert cfg["entryPoints"]["web"]["http"]["aliasHeadersStrategy"] == "delete"
    acme = static_config(TraefikStaticOptions(dynamic_dir=tmp_path, acme_email="ops@example.com"))
    assert acme["entryPoints"]["websecure"]["address"] == ":443"
    assert acme["certificatesResolvers"]["letsencrypt"]["acme"]["httpChallenge"] == {"entryPoint": "web"}
    assert yaml.safe_load(render_static_config(TraefikStaticOptions(dynamic_dir=tmp_path))) == cfg
    assert "caServer" not in acme["certificatesResolvers"]["letsencrypt"]["acme"]  # Let's Encrypt production


def test_the_acme_directory_and_the_challenge_are_operator_settings(tmp_path: Path) -> None:
    opts = TraefikStaticOptions(
        dynamic_dir=tmp_path,
        acme_email="ops@example.com",
        acme_ca_server="https://acme-staging-v02.api.letsencrypt.org/directory",
        acme_tls_challenge=True,
    )
    acme = static_config(opts)["certificatesResolvers"]["letsencrypt"]["acme"]
    assert acme["caServer"] == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert acme["tlsChallenge"] == {} and "httpChallenge" not in acme  # TLS-ALPN-01 where only :443 is open
    from runtime.traefik import main

    assert main(["--dynamic-dir", str(tmp_path), "--acme-email", "a@b.c", "--acme-challenge", "tls"]) == 0


def test_a_legacy_stem_names_every_owner_it_could_stand_for(tmp_path: Path) -> None:
    assert legacy_owners("acme--web") == [("acme", "web")]
    assert legacy_owners("rt-v--w--app") == [("rt-v", "w--app"), ("rt-v--w", "app")]
    r = router(tmp_path)
    (tmp_path / "rt-v--w--app.yml").write_text("http: {}\n")
    assert r.legacy() == ["rt-v--w--app"] and r.remove_legacy_stem("rt-v--w--app") and r.legacy() == []
    for bad in ("app_1", "../x--y", ".hidden--x"):
        with pytest.raises(ValueError):
            r.remove_legacy_stem(bad)


def test_an_upstream_route_sends_one_hostname_to_one_url_and_is_no_apps(tmp_path: Path) -> None:
    r = router(tmp_path, tls_cert_resolver="letsencrypt")
    path = r.write_upstream("api.apps.example.com", "http://127.0.0.1:7800")
    key = path.stem
    assert key.startswith("upstream_") and r.list() == [key]
    cfg = yaml.safe_load(path.read_text())
    assert cfg["http"]["routers"][key]["rule"] == "Host(`api.apps.example.com`)"
    assert cfg["http"]["routers"][f"{key}_tls"]["tls"] == {"certResolver": "letsencrypt"}
    assert cfg["http"]["services"][key]["loadBalancer"]["servers"] == [{"url": "http://127.0.0.1:7800"}]
    assert r.owned("mrg-anyone") == []  # no owner line: no reconciler sweeps it as an app's orphan


def test_an_unchanged_upstream_route_is_not_rewritten(tmp_path: Path) -> None:
    r = router(tmp_path)
    path = r.write_upstream("api.apps.example.com", "http://127.0.0.1:7800")
    before = path.stat().st_ino
    r.write_upstream("api.apps.example.com", "http://127.0.0.1:7800")
    assert path.stat().st_ino == before  # no rename: Traefik sees no event
    r.write_upstream("api.apps.example.com", "http://127.0.0.1:7801")
    assert path.stat().st_ino != before and "7801" in path.read_text()


def test_an_upstream_hostname_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid hostname"):
        router(tmp_path).write_upstream("api.example.com`) || Host(`evil.com", "http://127.0.0.1:7800")
