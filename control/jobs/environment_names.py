"""How an environment's container is named and labelled: from its id alone (``env_...``),
so the container can be told apart from every other tenant's and found again after a restart."""

from __future__ import annotations

ENVIRONMENT_ROLE = "environment"  # the role label of environment containers
_PREFIX = "env_"


def environment_container_name(environment_id: str) -> str:
    return f"moorage-{environment_id}"


def environment_label(environment_id: str) -> str:
    """The id as a DNS label (the container's hostname and its ``app`` label): ``env-...``."""
    return environment_id.replace("_", "-", 1)


def environment_id_of(label: str) -> str | None:
    """The environment id an ``app`` label names; None for anything else."""
    if not label.startswith("env-") or not label[4:].isalnum():
        return None
    return _PREFIX + label[4:]
