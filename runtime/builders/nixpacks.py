"""Nixpacks: the real ``nixpacks`` CLI writes a build plan as a Dockerfile
(``nixpacks build SRC --out OUT`` leaves ``OUT/.nixpacks/Dockerfile`` and the context in
OUT); the image is then built by the same docker SDK path as a Dockerfile app. The CLI reads
``nixpacks.toml`` from SRC itself, so passing the directory is all it takes to honour it."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

from runtime.builders.base import (
    BuildCancelled,
    BuildError,
    BuilderUnavailable,
    BuildRequest,
    BuildTimeout,
    BuiltImage,
)
from runtime.builders.dockerfile import DockerfileBuilder
from runtime.images import Images

INSTALL_HINT = (
    "The nixpacks CLI is not installed on this host. Install it (https://nixpacks.com/docs/install: "
    "`curl -sSL https://nixpacks.com/install.sh | bash`) or set MOORAGE_NIXPACKS_BIN to its path; "
    "or add a Dockerfile to the app and set its builder to 'dockerfile'."
)


class NixpacksBuilder:
    name = "nixpacks"

    def __init__(self, images: Images, binary: str = "nixpacks", ca_bundle: Path | None = None) -> None:
        self.docker = DockerfileBuilder(images, ca_bundle)
        self.binary = binary

    def executable(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise BuilderUnavailable(INSTALL_HINT)
        return found

    def build(self, request: BuildRequest) -> BuiltImage:
        binary = self.executable()
        out = (request.work_dir or request.source.parent) / "nixpacks-out"
        shutil.rmtree(out, ignore_errors=True)
        deadline = time.monotonic() + request.timeout
        self._plan(binary, request, out, deadline)
        dockerfile = out / ".nixpacks" / "Dockerfile"
        if not dockerfile.is_file():
            raise BuildError(f"nixpacks did not write {dockerfile.relative_to(out)}; see the log above", [])
        remaining = max(1.0, deadline - time.monotonic())
        built = self.docker.build_context(_with_timeout(request, remaining), out, ".nixpacks/Dockerfile")
        return BuiltImage(image_id=built.image_id, tag=built.tag, builder=self.name)

    def _plan(self, binary: str, request: BuildRequest, out: Path, deadline: float) -> None:
        proc = subprocess.Popen(
            [binary, "build", str(request.source), "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        killer = threading.Timer(max(0.0, deadline - time.monotonic()), proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                request.on_line(line.rstrip("\n"))
                if request.cancelled():
                    proc.kill()
                    raise BuildCancelled("the build was cancelled")
            code = proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if time.monotonic() >= deadline:
            raise BuildTimeout("nixpacks exceeded the build time limit", [])
        if code != 0:
            raise BuildError(f"nixpacks exited with status {code}", [])


def _with_timeout(request: BuildRequest, timeout: float) -> BuildRequest:
    from dataclasses import replace

    return replace(request, timeout=timeout)
