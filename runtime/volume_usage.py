"""How many bytes Docker volumes hold: for the build watchdog (a RUN step after a `VOLUME`,
the Dockerfile's or its base image's, writes into an anonymous volume, which its container's
`SizeRw` does not count) and for measured app volumes (`runtime.volumes`).

Where this host sees the daemon's volume directories (the usual install: the control plane
beside dockerd, as root) they are walked directly, which costs only what those volumes hold.
Otherwise the daemon's disk-usage report answers (API 1.41 has no per-volume query: it sizes
every volume on the host, so it is the slow path).
"""

from __future__ import annotations

import os
from typing import Any


def volume_bytes(api: Any, names: list[str], mountpoints: dict[str, str]) -> int:
    """`mountpoints` caches each volume's path between calls."""
    return sum(each_volume_bytes(api, names, mountpoints).values())


def each_volume_bytes(api: Any, names: list[str], mountpoints: dict[str, str]) -> dict[str, int]:
    """Bytes per volume: walked where readable, the rest from one disk-usage report."""
    sizes, unseen = {}, []
    for name in names:
        if name not in mountpoints:
            mountpoints[name] = str(api.inspect_volume(name).get("Mountpoint") or "")
        path = mountpoints[name]
        if path and os.access(path, os.R_OK | os.X_OK):
            sizes[name] = tree_bytes(path)
        else:
            unseen.append(name)
    if unseen:
        usage = {v.get("Name"): v.get("UsageData") or {} for v in api.df().get("Volumes") or []}
        sizes.update({name: max(0, int(usage.get(name, {}).get("Size", 0))) for name in unseen})
    return sizes


def tree_bytes(root: str) -> int:
    """Apparent size of the files under `root`, as Docker's own SizeRw counts (a tree changing
    under the walk is counted as far as it is seen)."""
    total, stack = 0, [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        total += _size(entry)
        except OSError:  # a directory removed under the walk
            continue
    return total


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0
