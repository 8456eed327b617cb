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
