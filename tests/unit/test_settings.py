import pytest

from infra.settings import SettingsError, load_settings


def test_defaults_point_at_local_servers(monkeypatch):
    for name in ("DATABASE_URL", "REDIS_URL", "STRIPE_API_BASE"):
        monkeypatch.delenv(name, raising=False)

    settings = load_settings()

    assert settings.database_url.endswith("@127.0.0.1:5432/vetqueue")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.stripe_api_base.startswith("http://127.0.0.1:")
    assert settings.stripe_max_concurrency == 8
    assert settings.dunning_retry_days == (3, 5, 7)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
        ("REDIS_URL", "127.0.0.1:6379", "REDIS_URL"),
        ("STRIPE_MAX_CONCURRENCY", "0", "STRIPE_MAX_CONCURRENCY"),
        ("STRIPE_READ_TIMEOUT_S", "soon", "STRIPE_READ_TIMEOUT_S"),
        ("DUNNING_RETRY_DAYS", "3,x", "DUNNING_RETRY_DAYS"),
        ("DUNNING_RETRY_DAYS", "0", "DUNNING_RETRY_DAYS"),
        ("DUNNING_RETRY_DAYS", "3,,5", "DUNNING_RETRY_DAYS"),
        ("DUNNING_RETRY_DAYS", "3_0", "DUNNING_RETRY_DAYS"),
        ("DUNNING_RETRY_DAYS", "+3", "DUNNING_RETRY_DAYS"),
        ("DUNNING_RETRY_DAYS", "\uff13", "DUNNING_RETRY_DAYS"),
        ("DUNNING_RETRY_DAYS", "1000000000", "DUNNING_RETRY_DAYS"),
        ("LEASE_GRACE_S", "inf", "LEASE_GRACE_S"),
        ("SWEEP_AFTER_S", "nan", "SWEEP_AFTER_S"),
        ("JOB_RETENTION_DAYS", "1000000000", "JOB_RETENTION_DAYS"),
        ("LOG_LEVEL", "chatty", "LOG_LEVEL"),
    ],
)
def test_invalid_value_names_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert expected in str(caught.value)
    assert "invalid configuration" in str(caught.value)


def test_plain_postgres_url_gets_psycopg_driver(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1/db")

    settings = load_settings()

    assert settings.database_url == "postgresql+psycopg://u@127.0.0.1/db"


def test_dunning_days_parsed_from_list(monkeypatch):
    monkeypatch.setenv("DUNNING_RETRY_DAYS", "1, 2,4")

    assert load_settings().dunning_retry_days == (1, 2, 4)
