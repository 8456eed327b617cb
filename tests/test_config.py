import logging

import pytest

from inspector import config
from inspector.errors import ConfigError


def test_defaults_validate() -> None:
    cfg = config.load()
    assert cfg.batching.batch_size == 8 and cfg.redis.keys().frames == "inspect:{main}:frames"


def test_shipped_yaml_loads() -> None:
    from conftest import ROOT

    cfg = config.load(ROOT / "config" / "inspector.yaml")
    assert cfg.redis.group == "inspectors"


@pytest.mark.parametrize("yaml_text, key", [
    ("batching:\n  batch_sise: 4\n", "batching.batch_sise"),              # typo in a key
    ("bathcing:\n  batch_size: 4\n", "bathcing"),                         # typo in a section
    ("batching:\n  batch_size: four\n", "batching.batch_size"),           # wrong type
    ("batching:\n  batch_size: 0\n", "batching.batch_size"),              # out of range
    ("redis:\n  block_ms: 20000\n", "redis.block_ms"),                    # BLOCK longer than socket timeout
    ("postprocess:\n  thresholds: [0.5, 0.5]\n", "postprocess.thresholds"),  # one value per class
    ("engine:\n  backend: tensorflow\n", "engine.backend"),
])
def test_errors_name_the_key(tmp_path, yaml_text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.load(path)


def test_missing_file_names_the_fix(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        config.load(tmp_path / "nope.yaml")


def test_precedence_env_then_cli(tmp_path, monkeypatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  url: redis://file:1/0\n")
    assert config.load(path).redis.url == "redis://file:1/0"
    monkeypatch.setenv("INSPECTOR_REDIS_URL", "redis://env:2/0")
    assert config.load(path).redis.url == "redis://env:2/0"
    assert config.load(path, "redis://cli:3/0", batching__batch_size=2).redis.url == "redis://cli:3/0"
    assert config.load(path, batching__batch_size=2).batching.batch_size == 2


def test_redis_url_credential_sits_between_yaml_and_environment(tmp_path, monkeypatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("redis:\n  url: redis://yaml:1/0\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis-url").write_text("redis://worker-main:s3cret@cred:3/0\n")  # as LoadCredential= copies it
    monkeypatch.delenv("INSPECTOR_REDIS_URL", raising=False)
    assert config.load(path).redis.url == "redis://yaml:1/0"  # outside a unit: no credentials folder
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config.load(path)
    assert cfg.redis.url == "redis://worker-main:s3cret@cred:3/0" and "s3cret" not in cfg.redis.safe_url()
    monkeypatch.setenv("INSPECTOR_REDIS_URL", "redis://env:2/0")
    assert config.load(path).redis.url == "redis://env:2/0"
    assert config.load(path, "redis://cli:4/0").redis.url == "redis://cli:4/0"
    (creds / "redis-url").unlink()  # a unit without that credential: the environment, then the YAML, as before
    monkeypatch.delenv("INSPECTOR_REDIS_URL")
    assert config.load(path).redis.url == "redis://yaml:1/0"


@pytest.mark.parametrize("address, expected", [
    (":9108", ("127.0.0.1", 9108)),       # no host: loopback only, never every interface
    ("0.0.0.0:9108", ("0.0.0.0", 9108)),  # every interface, on purpose
    ("10.1.2.3:9109", ("10.1.2.3", 9109)),
])
def test_metrics_listen_on_loopback_unless_a_host_is_named(address: str, expected: tuple[str, int]) -> None:
    assert config.parse_address(address) == expected


def test_a_moved_key_is_read_in_its_new_place_with_a_warning(tmp_path, caplog) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("metrics:\n  report_every_s: 7\n  stop_timeout_s: 3\n")
    with caplog.at_level(logging.WARNING, logger="inspector.config"):
        cfg = config.load(path)
    assert cfg.worker.stop_timeout_s == 3.0 and cfg.metrics.report_every_s == 7.0
    assert not hasattr(cfg.metrics, "stop_timeout_s")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "'metrics.stop_timeout_s'" in warned[0] and "'worker.stop_timeout_s'" in warned[0]
    with pytest.raises(ConfigError, match=r"worker\.stop_timeout_s.*>= 0"):  # still checked, under its new name
        config.from_dict({"metrics": {"stop_timeout_s": -1}})


def test_a_moved_key_given_twice_agreeing_is_read_differing_is_refused() -> None:
    assert config.from_dict({"metrics": {"stop_timeout_s": 4}, "worker": {"stop_timeout_s": 4.0}}
                            ).worker.stop_timeout_s == 4.0
    with pytest.raises(ConfigError) as err:
        config.from_dict({"metrics": {"stop_timeout_s": 4}, "worker": {"stop_timeout_s": 9}})
    text = str(err.value)
    assert "'metrics.stop_timeout_s'" in text and "'worker.stop_timeout_s'" in text and "delete" in text


def test_the_new_key_alone_warns_of_nothing(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="inspector.config"):
        assert config.from_dict({"worker": {"stop_timeout_s": 2}}).worker.stop_timeout_s == 2.0
    assert not caplog.records
    with pytest.raises(ConfigError, match=r"unknown config key 'worker\.stop_timout_s'"):
        config.from_dict({"worker": {"stop_timout_s": 2}})
