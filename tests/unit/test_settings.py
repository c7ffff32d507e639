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
        ("STRIPE_API_BASE", "http://", "STRIPE_API_BASE"),
        ("STRIPE_API_BASE", "ftp://stripe.example", "STRIPE_API_BASE"),
        ("STRIPE_PROXY_URL", "ftp://proxy.example", "STRIPE_PROXY_URL"),
        ("STRIPE_PROXY_URL", "http://", "STRIPE_PROXY_URL"),
        ("STRIPE_API_BASE", "http://127.0.0.1:99999", "STRIPE_API_BASE"),
        ("STRIPE_API_BASE", "http://127.0.0.1:0", "STRIPE_API_BASE"),
        ("STRIPE_PROXY_URL", "http://u:p@127.0.0.1:notaport", "STRIPE_PROXY_URL"),
        ("STRIPE_PROXY_URL", "http://u:p%E9ss@127.0.0.1:3128", "STRIPE_PROXY_URL"),
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


def test_messages_have_no_validator_prefix(monkeypatch):
    monkeypatch.setenv("STRIPE_PROXY_URL", "ftp://proxy.example")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert str(caught.value) == (
        "invalid configuration: STRIPE_PROXY_URL: expected an http:// or "
        "https:// proxy address with a host"
    )


def test_proxy_error_hides_password(monkeypatch):
    # An unencoded # ends the address early, so the port reads as "sec".
    monkeypatch.setenv("STRIPE_PROXY_URL", "http://user:sec#ret@127.0.0.1:3128")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert "STRIPE_PROXY_URL" in str(caught.value)
    assert "percent-encode" in str(caught.value)
    assert "sec" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        (
            "http://clinic:%E2%82%AC@127.0.0.1:3128",
            "http://clinic:%E2%82%AC@127.0.0.1:3128",
        ),
        ("http://127.0.0.1:3128", "http://127.0.0.1:3128"),
        ("HTTPS://proxy.example:443", "HTTPS://proxy.example:443"),
    ],
)
def test_proxy_url_accepted(monkeypatch, value, expected):
    monkeypatch.setenv("STRIPE_PROXY_URL", value)

    assert load_settings().stripe_proxy_url == expected
