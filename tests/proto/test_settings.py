"""The shared settings: one environment variable per shared fact, read alike by every service."""

from pathlib import Path

import pytest
import yaml

from learner.settings import Settings as LearnerSettings
from learner.settings import SFTSettings
from proto.settings import RETIRED_VARIABLES, ServiceSettings
from reward_service.settings import Settings as RewardSettings
from serving.settings import Settings as ServingSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"RLHF_SERVING_": ServingSettings, "RLHF_REWARD_": RewardSettings,
            "RLHF_LEARNER_": LearnerSettings, "RLHF_LEARNER_SFT_": SFTSettings}
SHARED = {"state_dir": "RLHF_STATE_DIR", "base_model": "RLHF_BASE_MODEL"}


@pytest.fixture
def model(tmp_path) -> Path:
    """A directory that passes for a model (serving checks for config.json)."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def build(settings: type[ServiceSettings]) -> ServiceSettings:
    if settings is SFTSettings:
        return settings(data=Path("demos.jsonl"), output_dir=Path("out"))
    return settings()


@pytest.mark.parametrize("settings", list(SERVICES.values()))
def test_every_service_reads_the_shared_variables(monkeypatch, tmp_path, model, settings):
    monkeypatch.setenv("RLHF_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RLHF_BASE_MODEL", str(model))
    monkeypatch.setenv("RLHF_KAFKA_TOPIC_PREFIX", "x.")
    built = build(settings)
    assert (built.state_dir, built.base_model, built.kafka.topic_prefix) == (tmp_path / "state", model, "x.")


@pytest.mark.parametrize("prefix, settings", list(SERVICES.items()))
def test_a_shared_fact_has_no_second_variable(monkeypatch, tmp_path, model, prefix, settings):
    monkeypatch.setenv("RLHF_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("RLHF_BASE_MODEL", str(model))
    for field in SHARED:
        if prefix + field.upper() not in RETIRED_VARIABLES:
            monkeypatch.setenv(prefix + field.upper(), "/elsewhere")
    built = build(settings)
    assert (built.state_dir, built.base_model) == (tmp_path, model)


@pytest.mark.parametrize("retired, successor", sorted(RETIRED_VARIABLES.items()))
def test_a_retired_variable_stops_a_service_naming_its_successor(monkeypatch, model, retired, successor):
    monkeypatch.setenv("RLHF_BASE_MODEL", str(model))
    monkeypatch.setenv(retired, "/old/setting")
    for settings in SERVICES.values():
        with pytest.raises(ValueError, match=f"{retired} is no longer read: set {successor} instead"):
            build(settings)


def test_the_base_model_defaults_to_the_bundled_one_under_the_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("RLHF_BASE_MODEL", raising=False)
    monkeypatch.setenv("RLHF_STATE_DIR", str(tmp_path))
    assert ServiceSettings().base_model == tmp_path / "models" / "SmolLM2-135M-Instruct"
    other = tmp_path / "b"
    assert ServiceSettings(state_dir=other).base_model == other / "models" / "SmolLM2-135M-Instruct"


def test_serving_refuses_a_missing_model_naming_its_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_BASE_MODEL", str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="RLHF_BASE_MODEL"):
        ServingSettings()


def variables() -> set[str]:
    """Every environment variable a service's settings read."""
    names = set(SHARED.values())
    for prefix, settings in SERVICES.items():
        names |= {prefix + f.upper() for f in settings.model_fields if f not in SHARED and f != "kafka"}
    kafka = ServiceSettings.model_fields["kafka"].default_factory
    return names | {"RLHF_KAFKA_" + f.upper() for f in kafka.model_fields}


def test_the_k8s_config_map_sets_only_variables_the_services_read():
    config = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    assert set(config["data"]) - variables() == set()
