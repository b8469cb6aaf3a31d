from __future__ import annotations

from pathlib import Path

import pytest

from control.settings import Settings, SettingsError


def test_defaults_put_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"MOORAGE_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path}/moorage.db"
    assert settings.is_sqlite and settings.port == 7800 and settings.host == "127.0.0.1"


def test_values_are_typed() -> None:
    settings = Settings.from_env(
        {"MOORAGE_PORT": "9000", "MOORAGE_REQUIRE_OPERATOR_KEY": "yes", "MOORAGE_DATABASE_URL": "sqlite:///x.db"}
    )
    assert settings.port == 9000 and settings.require_operator_key is True
    assert settings.database_url == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("name", "value"),
    [("MOORAGE_PORT", "eighty"), ("MOORAGE_REQUIRE_OPERATOR_KEY", "maybe"), ("MOORAGE_LOG_FORMAT", "xml")],
)
def test_bad_values_say_which_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name if name != "MOORAGE_LOG_FORMAT" else "MOORAGE_LOG_FORMAT"):
        Settings.from_env({name: value})


def test_every_field_is_a_moorage_variable() -> None:
    from dataclasses import fields

    settings = Settings.from_env({f"MOORAGE_{f.name.upper()}": "7" for f in fields(Settings) if f.name == "port"})
    assert settings.port == 7
    settings = Settings.from_env({"MOORAGE_TRAEFIK_DYNAMIC_DIR": "/tmp/dyn", "MOORAGE_METRICS_PUBLIC": "on"})
    assert settings.traefik_dynamic_dir == Path("/tmp/dyn") and settings.metrics_public is True


def test_negative_numbers_are_refused() -> None:
    with pytest.raises(SettingsError, match="MOORAGE_JOB_WORKERS must not be negative"):
        Settings.from_env({"MOORAGE_JOB_WORKERS": "-1"})
