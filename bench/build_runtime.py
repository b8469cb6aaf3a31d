"""Build time under gVisor (runsc) vs runc: the same small Dockerfile's RUN steps, uncached.

The classic builder has no runtime option: its RUN steps get dockerd's default runtime,
which deploy/host-setup.sh makes runsc. To measure both runtimes on one daemon in one run,
each sample also replays the RUN steps the way the classic builder runs them (create a
container from the previous step's image with the step's command, start it, wait, commit
the result), once with ``runtime=runsc`` and once with ``runtime=runc``; the real build
(``docker build`` through moorage's ``Images``, on a per-build network, default runtime)
is timed beside them, so the replay under runsc can be checked against the builder itself.
Samples are interleaved so drift on the host affects all three alike.

    .venv/bin/python bench/build_runtime.py [-n 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.docker_engine import DockerEngine
from runtime.images import Images
from runtime.networks import BuildNetworks
from runtime.settings import RuntimeSettings

BASE = "moorage/python:3-bookworm"
STEPS = (  # a CPU-bound step, a file-heavy step (system calls: where gVisor costs most), a small one
    'python3 -c "import hashlib; [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300000)]"',
    "mkdir /data && for i in $(seq 1 400); do echo $i > /data/f$i; done && tar -cf /data.tar /data",
    "python3 -c 'import sys; print(sys.version)' > /version.txt",
)


def dockerfile(nonce: str) -> str:
    # The nonce in a LABEL before the steps: every sample builds them afresh (no cache hit).
    return f"FROM {BASE}\nLABEL bench.nonce={nonce}\n" + "".join(f"RUN {step}\n" for step in STEPS)


def real_build(images: Images, network: str, tenant: str, nonce: str) -> float:
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(dockerfile(nonce))
        started = time.perf_counter()
        built = images.build(Path(context), f"moorage-bench/build:{nonce}", tenant=tenant, app="bench", network=network)
        elapsed = time.perf_counter() - started
    images.remove(built.image_id, force=True)
    return elapsed


def replayed_steps(engine: DockerEngine, network: str, runtime: str) -> float:
    """The RUN steps as the classic builder runs them, under ``runtime``."""
    api = engine.client.api
    image, made = BASE, []
    started = time.perf_counter()
    for step in STEPS:
        container = api.create_container(
            image, ["/bin/sh", "-c", step], host_config=api.create_host_config(runtime=runtime, network_mode=network)
        )["Id"]
        api.start(container)
        if api.wait(container)["StatusCode"] != 0:
            raise RuntimeError(f"step failed under {runtime}: {step}")
        image = api.commit(container)["Id"]
        api.remove_container(container)
        made.append(image)
    elapsed = time.perf_counter() - started
    api.remove_image(made[-1])  # its untagged parents, the earlier steps, go with it
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="samples of each")
    args = ap.parse_args()
    engine = DockerEngine(RuntimeSettings())
    default_runtime = engine.client.info().get("DefaultRuntime")
    images, networks = Images(engine), BuildNetworks(engine)
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    network = networks.create(tenant, build="bench")
    times: dict[str, list[float]] = {"build": [], "runsc": [], "runc": []}
    try:
        replayed_steps(engine, network, "runsc")  # warm-up, discarded (layers and binaries into cache)
        replayed_steps(engine, network, "runc")
        for i in range(args.n):
            times["build"].append(real_build(images, network, tenant, f"{tenant}-{i}"))
            times["runsc"].append(replayed_steps(engine, network, "runsc"))
            times["runc"].append(replayed_steps(engine, network, "runc"))
    finally:
        networks.remove(network)

    print(f"engine {engine.version()}, {BASE}, {len(STEPS)} RUN steps, {args.n} samples each (interleaved)")
    med = {name: statistics.median(xs) for name, xs in times.items()}
    for name, label in (
        ("build", f"docker build (default runtime {default_runtime})"),
        ("runsc", "RUN steps replayed under runsc"),
        ("runc", "RUN steps replayed under runc"),
    ):
        xs = times[name]
        print(f"{label:42s} median {med[name]:6.2f} s  (min {min(xs):.2f}, max {max(xs):.2f})")
    print(
        f"summary: RUN steps {med['runsc']:.2f} s under runsc vs {med['runc']:.2f} s under runc median "
        f"(ratio {med['runsc'] / med['runc']:.2f}x); the real build ({default_runtime}) {med['build']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
