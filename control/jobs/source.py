"""Getting a deployment's source tree: an uploaded archive was extracted at upload time;
a git source is cloned here with the git CLI (depth 1, time limit, no hooks, no prompts,
https only (http where allowed), no redirects, the host pinned to the addresses the policy
checked: ``control.domain.git_sources``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


class SourceError(RuntimeError):
    """The source could not be fetched; the message is safe to show the tenant."""


def _tree_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*"))


def clone(url: str, ref: str, dest: Path, *, timeout: float, max_bytes: int,
          pins: Sequence[str] = (), allow_http: bool = False) -> None:
    """``pins``: ``host:port:address[,address]`` entries for curl, so git connects only to
    the addresses that were checked, whatever DNS answers by then."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null"}  # no url.insteadOf or credential helpers from the host
    # init + fetch of one ref at depth 1 works for branches, tags and commit ids alike.
    safe = ["-c", "core.hooksPath=/dev/null", "-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
            "-c", f"protocol.http.allow={'always' if allow_http else 'never'}", "-c", "http.followRedirects=false"]
    for pin in pins:
        safe += ["-c", f"http.curloptResolve={pin}"]
    steps = [
        ["git", "init", "--quiet", str(dest)],
        ["git", *safe, "-C", str(dest), "fetch", "--quiet", "--depth", "1", "--no-tags", "--", url, ref],
        ["git", *safe, "-C", str(dest), "-c", "advice.detachedHead=false", "checkout", "--quiet", "FETCH_HEAD"],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SourceError(f"git {cmd[cmd.index('-C') + 2] if '-C' in cmd else 'init'} took longer than {timeout:.0f}s") from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise SourceError(f"git could not fetch ref {ref!r} from the repository: {detail[0][:300]}")
    shutil.rmtree(dest / ".git", ignore_errors=True)  # history is not part of the build context
    if _tree_size(dest) > max_bytes:
        raise SourceError(f"the repository checkout is larger than {max_bytes} bytes")
