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


# The warm pool's containers: started for no tenant, on a network of their own, and made an
# environment's by renaming them. Their labels cannot change once made, so the tenant label
# holds a name no tenant may take (``moorage-`` is reserved) and the environment a claimed one
# serves is in its name; its tenant is the tenant network it was moved onto.
POOL_ROLE = "environment-pool"
POOL_TENANT = "moorage-pool"
POOL_NETWORK = "moorage-environment-pool"
POOL_NETWORK_ROLE = "environment-pool-network"


def pooled_container_name(slot: str) -> str:
    return f"moorage-pool-{slot}"


def claimed_environment_id(container_name: str) -> str | None:
    """The environment a claimed pool container serves, from its name; None while unclaimed."""
    prefix = environment_container_name(_PREFIX)
    if not container_name.startswith(prefix) or not container_name[len(prefix) :].isalnum():
        return None
    return container_name.removeprefix("moorage-")
