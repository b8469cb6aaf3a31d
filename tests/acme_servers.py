"""Pebble (Let's Encrypt's ACME test server) and pebble-challtestsrv (a DNS server the test
programs), both from Debian's ``pebble`` package, on loopback ports of their own.

Pebble validates HTTP-01 for real: it resolves the name through challtestsrv and fetches
the challenge from Traefik's web entrypoint (``http_port``). Nothing here makes a
validation pass by itself (``PEBBLE_VA_ALWAYS_VALID`` is never set). Pebble's own HTTPS
listener gets a certificate from a throwaway CA made here; Traefik trusts it through
``LEGO_CA_CERTIFICATES`` (``ca_bundle``). The certificates Pebble *issues* chain to a root
it makes at start (``issuing_root()``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runtime.traefik import free_loopback_port


def _throwaway_ca(folder: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moorage tests: ACME server TLS CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


def binaries_present() -> bool:
    return bool(shutil.which("pebble") and shutil.which("pebble-challtestsrv"))


class AcmeTestServers:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.acme_port, self.management_port = free_loopback_port(), free_loopback_port()
        self.dns_port, self.dns_management_port = free_loopback_port(), free_loopback_port()
        self.ca_bundle, self._cert, self._key = _throwaway_ca(folder)
        self._procs: list[subprocess.Popen[bytes]] = []
        self.pebble_log = folder / "pebble.log"

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def start(self, *, http_port: int) -> AcmeTestServers:
        """``http_port``: where Pebble fetches HTTP-01 challenges (Traefik's web entrypoint)."""
        # Unknown names do not resolve: a test points each name it uses where it wants it.
        self._spawn(
            ["pebble-challtestsrv", "-defaultIPv4", "", "-defaultIPv6", "", "-dns01", self.nameserver,
             "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_management_port}"],
            self.folder / "challtestsrv.log", {},
        )  # fmt: skip
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.acme_port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self._cert),
                "privateKey": str(self._key),
                "httpPort": http_port,
                "tlsPort": free_loopback_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.folder / "pebble.json").write_text(json.dumps(config))
        # No random sleeps before validating, no random nonce rejections: real checks, quickly.
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        self._spawn(["pebble", "-config", str(self.folder / "pebble.json"), "-dnsserver", self.nameserver], self.pebble_log, env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.directory_url, verify=self._trust(), timeout=1).status_code == 200:
                    httpx.post(self._dns("/clear-txt"), json={"host": "warmup.invalid."}, timeout=2)
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"pebble did not start:\n{self.pebble_log.read_text()[-2000:]}")

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        with log.open("ab") as out:
            self._procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", **env}))

    def _trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def _dns(self, path: str) -> str:
        return f"http://127.0.0.1:{self.dns_management_port}{path}"

    def point(self, hostname: str, address: str = "127.0.0.1") -> None:
        r = httpx.post(self._dns("/add-a"), json={"host": f"{hostname}.", "addresses": [address]}, timeout=5)
        r.raise_for_status()

    def set_txt(self, name: str, value: str) -> None:
        httpx.post(self._dns("/set-txt"), json={"host": f"{name}.", "value": value}, timeout=5).raise_for_status()

    def issuing_root(self) -> str:
        """The root Pebble signs certificates with (made at its start)."""
        r = httpx.get(f"https://127.0.0.1:{self.management_port}/roots/0", verify=self._trust(), timeout=5)
        r.raise_for_status()
        return r.text

    def orders(self) -> int:
        """Certificate orders Pebble received so far, from its request log."""
        return self.pebble_log.read_text(errors="replace").count("POST /order-plz")

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
