"""Git source rules without a network: URL shapes, internal addresses (IPv4, IPv6,
IPv4-mapped), the operator's allow-list, and the pins handed to git."""

from __future__ import annotations

import ipaddress

import pytest

from control.domain.errors import Invalid
from control.domain.git_sources import (
    GitHostRefused,
    check_git_source,
    check_git_url,
    curl_resolve_entries,
    resolve_git_host,
)
from control.settings import Settings, SettingsError


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/git/repo.git",
        "ssh://host/repo.git",
        "git://host/repo.git",
        "http://host/repo.git",
        "ext::sh -c touch% /tmp/x",
        "/srv/git/repo.git",
        "host:repo.git",
        "HTTPS://user:pw@host/r.git",
        "https://user@host/r.git",
        "https://host\\@127.0.0.1/r.git",
        "https://ho st/r.git",
        "https://host%2f/r.git",
        "https://[::1/r.git",
        "https://host:0/r.git",
        "https://host:99999/r.git",
        "https://host/r.git\n",
    ],
)
def test_urls_other_than_plain_https_are_refused(url: str) -> None:
    with pytest.raises(Invalid) as caught:
        check_git_source(url, "main", allow_http=False)
    assert caught.value.extra["errors"][0]["field"] == "git.url"


def test_http_only_when_the_operator_allows_it() -> None:
    assert check_git_url("http://git.example/r.git", allow_http=True).port == 80
    target = check_git_url("https://Git.Example:8443/r.git", allow_http=False)
    assert (target.scheme, target.host, target.port) == ("https", "git.example", 8443)
    assert check_git_url("https://[2001:db8::1]/r.git", allow_http=False).host == "2001:db8::1"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.5",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "192.0.2.1",
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    target = check_git_url("https://git.example/r.git", allow_http=False)
    with pytest.raises(GitHostRefused, match="internal address"):
        resolve_git_host(target, (), resolver=lambda host, port: ["93.184.216.34", address])


def test_a_public_host_passes_and_is_pinned_to_what_was_checked() -> None:
    target = check_git_url("https://git.example/r.git", allow_http=False)
    found = resolve_git_host(target, (), resolver=lambda host, port: ["93.184.216.34", "2606:2800:220:1::1"])
    assert curl_resolve_entries(target, found) == ["git.example:443:93.184.216.34,[2606:2800:220:1::1]"]
    literal = check_git_url("https://93.184.216.34/r.git", allow_http=False)
    assert curl_resolve_entries(literal, ["93.184.216.34"]) == []  # nothing to look up, nothing to rebind


def test_the_operator_allow_list_lets_named_networks_through() -> None:
    nets = Settings(git_allowed_networks="127.0.0.0/8,fd00::/8").git_networks
    target = check_git_url("https://git.internal/r.git", allow_http=False)
    assert resolve_git_host(target, nets, resolver=lambda h, p: ["127.0.0.1", "::ffff:127.0.0.2", "fd00::5"])
    with pytest.raises(GitHostRefused):
        resolve_git_host(target, nets, resolver=lambda h, p: ["10.0.0.1"])
    with pytest.raises(SettingsError, match="MOORAGE_GIT_ALLOWED_NETWORKS"):
        Settings.from_env({"MOORAGE_GIT_ALLOWED_NETWORKS": "127.0.0.0/33"})


def test_numeric_hosts_are_checked_as_the_system_resolves_them() -> None:
    for url in ("https://2130706433/r.git", "https://0x7f.1/r.git", "https://127.1/r.git", "https://localhost/r.git"):
        target = check_git_url(url, allow_http=False)
        with pytest.raises(GitHostRefused, match="internal address"):
            resolve_git_host(target, ())


def test_a_host_that_does_not_resolve_is_refused() -> None:
    target = check_git_url("https://no-such-host.invalid/r.git", allow_http=False)
    with pytest.raises(GitHostRefused, match="does not resolve"):
        resolve_git_host(target, ())
    assert ipaddress.ip_address("93.184.216.34").is_global
