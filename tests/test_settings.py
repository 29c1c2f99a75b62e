"""Settings from the environment: every field read by its type from its variable, and every
variable in the README's table."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from app.settings import DEFAULT_ALGORITHMS, Settings, SettingsError, env_name
from tests.servers import ROOT


def test_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_blank_variables_keep_the_defaults() -> None:
    blank = {env_name(field.name): "  " for field in dataclasses.fields(Settings)}

    assert Settings.from_env(blank) == Settings()


def test_each_type_is_read_from_its_variable() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": " postgres://u@h/db ",
            "DATA_DIR": "/srv/data",
            "DB_POOL_MAX_SIZE": "9",
            "DB_COMMAND_TIMEOUT_SECONDS": "2.5",
            "GRAPHIQL": "off",
            "JWKS_URL": "https://issuer.example/jwks",
            "JWKS_FILE": "",
            "ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "TOKEN_ALGORITHMS": "ES256,RS256",
            "TOKEN_ISSUER": "https://issuer.example/",
            "TOKEN_AUDIENCE_BASE": "https://api.example/v1/accounts/",
        }
    )

    assert settings.database_url == "postgres://u@h/db"
    assert settings.data_dir == Path("/srv/data")
    assert settings.db_pool_max_size == 9
    assert settings.db_command_timeout_seconds == 2.5
    assert settings.graphiql is False
    assert settings.jwks_url == "https://issuer.example/jwks"
    assert settings.jwks_file is None
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.token_algorithms == ("ES256", "RS256")
    assert settings.issuer == "https://issuer.example/"
    assert settings.audience_base == "https://api.example/v1/accounts"
    assert Settings().token_algorithms == DEFAULT_ALGORITHMS


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DB_POOL_MAX_SIZE", "five", "DB_POOL_MAX_SIZE must be a whole number, not 'five'"),
        ("DB_POOL_MAX_SIZE", "2.5", "DB_POOL_MAX_SIZE must be a whole number, not '2.5'"),
        ("READINESS_TIMEOUT_SECONDS", "soon", "READINESS_TIMEOUT_SECONDS must be a number"),
        ("GRAPHIQL", "maybe", "GRAPHIQL must be true or false, not 'maybe'"),
        ("TOKEN_ALGORITHMS", ",", "TOKEN_ALGORITHMS must name at least one algorithm"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({variable: value})


def test_every_setting_is_in_the_readmes_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings") :]
    table = table[: table.index("\n## ")]

    missing = [
        env_name(field.name)
        for field in dataclasses.fields(Settings)
        if f"`{env_name(field.name)}`" not in table
    ]

    assert missing == []
