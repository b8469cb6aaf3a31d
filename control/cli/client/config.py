"""Where the API is and which key to use: flags, then environment, then a profile file.

Profile file (``$MOORAGE_CONFIG`` or ``~/.config/moorage/profiles.toml``)::

    [default]
    url = "http://127.0.0.1:7800"
    api_key_file = "/root/.moorage/operator.key"   # or api_key = "mrg_live_..."
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:7800"


class ConfigError(Exception):
    """The CLI cannot tell where the API is or which key to send."""


@dataclass(frozen=True)
class ClientConfig:
    url: str
    api_key: str | None


def _profile(name: str) -> dict[str, str]:
    path = Path(os.environ.get("MOORAGE_CONFIG") or Path.home() / ".config" / "moorage" / "profiles.toml")
    if not path.exists():
        if name != "default":
            raise ConfigError(f"profile '{name}' asked for, but {path} does not exist")
        return {}
    try:
        profiles = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    if name not in profiles:
        if name != "default":
            raise ConfigError(f"no profile '{name}' in {path}; it has {sorted(profiles)}")
        return {}
    return {str(k): str(v) for k, v in profiles[name].items()}


def resolve(url: str | None = None, api_key: str | None = None, profile: str | None = None) -> ClientConfig:
    settings = _profile(profile or os.environ.get("MOORAGE_PROFILE") or "default")
    key = api_key or os.environ.get("MOORAGE_API_KEY") or settings.get("api_key")
    key_file = os.environ.get("MOORAGE_API_KEY_FILE") or settings.get("api_key_file")
    if not key and key_file:
        try:
            key = Path(key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
    base = url or os.environ.get("MOORAGE_URL") or settings.get("url") or DEFAULT_URL
    return ClientConfig(url=base.rstrip("/"), api_key=key or None)
