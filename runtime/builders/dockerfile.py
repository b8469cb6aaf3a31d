"""Build the app's own Dockerfile with the docker SDK (``runtime.images``), streaming each
log line to the request's sink and closing the stream when the caller cancels. With an
operator CA bundle, the context and Dockerfile are prepared to trust it (``runtime.ca_bundle``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime import ca_bundle
from runtime.builders.base import BuildCancelled, BuildError, BuildRequest, BuiltImage
from runtime.images import Images


def _prepare(path: Path, prepare: Callable[[str], str]) -> None:
    """The daemon builds exactly the text ``prepare`` returns: it replaces the file."""
    if path.is_symlink() or not path.is_file():
        raise BuildError(f"{path.name} must be a regular file (not a link) at the root of the source", [])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise BuildError(f"{path.name} is not UTF-8 text; save it as UTF-8", []) from None
    checked = prepare(text)
    path.unlink()
    path.write_text(checked, encoding="utf-8")


class DockerfileBuilder:
    name = "dockerfile"

    def __init__(self, images: Images, ca_bundle: Path | None = None) -> None:
        """``ca_bundle``: certificates every build stage trusts (``runtime.ca_bundle``)."""
        self.images = images
        self.ca_bundle = ca_bundle

    def build(self, request: BuildRequest) -> BuiltImage:
        dockerfile = request.source / "Dockerfile"
        if not dockerfile.is_file():
            raise BuildError("the source has no Dockerfile at its root; add one or use the nixpacks builder", [])
        return self.build_context(request, request.source, "Dockerfile")

    def build_context(self, request: BuildRequest, context: Path, dockerfile: str) -> BuiltImage:
        if request.prepare_dockerfile is not None:
            _prepare(context / dockerfile, request.prepare_dockerfile)
        if self.ca_bundle is not None:  # after the policy check: it judges the tenant's own text
            try:
                ca_bundle.prepare_context(context, dockerfile, self.ca_bundle)
            except (ca_bundle.CaBundleError, OSError) as exc:
                raise BuildError(f"could not prepare the build to trust the platform's CA certificates: {exc}", []) from None
        stream = self.images.build_stream(
            context,
            request.tag,
            tenant=request.tenant,
            app=request.app,
            release=request.release,
            dockerfile=dockerfile,
            timeout=request.timeout,
            labels=request.labels,
            network=request.network,
        )
        try:
            while True:
                try:
                    line = next(stream)
                except StopIteration as done:
                    return BuiltImage(image_id=str(done.value), tag=request.tag, builder=self.name)
                request.on_line(line)
                if request.cancelled():
                    raise BuildCancelled("the build was cancelled")
        finally:
            stream.close()  # closes the HTTP stream: dockerd stops the build
