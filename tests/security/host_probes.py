"""What the escape probes aim at on the host: its own addresses, a listener bound to one of
them, and a way to open one port in the host firewall for a moment, so a probe that fails
against the firewall is shown to connect without it (the probe itself can succeed)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HOST_GUARD = "MOORAGE-HOST-GUARD"  # deploy/host-setup.sh's chain for container -> host input
TRAEFIK_PORT = 80  # the host Traefik's web entrypoint (deploy/host-setup.sh, the default)


def host_addresses() -> dict[str, str]:
    """The host's IPv4 addresses but loopback and user-defined bridges, by interface (eth0,
    docker0, ...). Bridges come and go with other tests' networks, and an address that went
    meanwhile is no longer the host's: a probe to it would leave the host instead. The
    bridges a test owns it adds itself (their gateways)."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return {
        link["ifname"]: info["local"]
        for link in json.loads(out)
        for info in link.get("addr_info", [])
        if link["ifname"] != "lo" and not link["ifname"].startswith("br-")
    }


class Listener:
    """A TCP server that accepts and closes every connection, on ``host`` and a free port."""

    def __init__(self, host: str) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((host, 0))
        self.server.listen(16)
        self.port: int = self.server.getsockname()[1]
        threading.Thread(target=self._accept_forever, daemon=True).start()

    def _accept_forever(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
                conn.close()
            except OSError:
                return

    def close(self) -> None:
        self.server.close()


def host_guard_present() -> bool:
    done = subprocess.run(["iptables", "-w", "-S", HOST_GUARD], capture_output=True, text=True, check=False)
    return done.returncode == 0 and "-j REJECT" in done.stdout


@contextmanager
def opened_in_firewall(port: int) -> Iterator[None]:
    """Accept container traffic to the host's ``port`` ahead of the host guard, then take it away."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"]
    subprocess.run(["iptables", "-w", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=True)
