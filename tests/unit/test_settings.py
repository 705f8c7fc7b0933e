"""Settings from the environment: what the startup log may print of them."""

from __future__ import annotations

import pytest

from runtime.settings import Settings


@pytest.mark.parametrize(
    ("name", "url", "shown"),
    [
        ("DATABASE_URL", "postgresql://selftune:s3cret@db:5432/selftune", "postgresql://selftune:***@db:5432/selftune"),
        ("REDIS_URL", "redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),  # Redis's usual form
        ("REDIS_URL", "redis://default:s3cret@redis:6379/0", "redis://default:***@redis:6379/0"),
        ("REDIS_URL", "redis://redis:6379/0", "redis://redis:6379/0"),
    ],
)
def test_the_settings_logged_at_startup_never_hold_a_password(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str, shown: str
) -> None:
    monkeypatch.setenv(name, url)
    redacted = Settings.from_env().redacted()
    assert redacted[name.lower()] == shown
    assert "s3cret" not in repr(redacted)


@pytest.mark.parametrize("value", ["xml", "JSON", "plain"])
def test_an_unknown_log_format_is_a_settings_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """LOG_FORMAT=xml used to mean plain text, silently."""
    from runtime import logs
    from runtime.settings import SettingsError

    monkeypatch.setenv("LOG_FORMAT", value)
    with pytest.raises(SettingsError, match="LOG_FORMAT must be one of json, text"):
        Settings.from_env()
    with pytest.raises(SettingsError):
        logs.formatter()


def test_the_ops_token_is_never_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_TOKEN", "s3cret-ops")
    assert Settings.from_env().redacted()["ops_token"] == "***"
    assert "s3cret" not in repr(Settings.from_env().redacted())
