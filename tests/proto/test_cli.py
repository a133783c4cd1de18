"""One command-line style: every CLI lists every setting in --help, flags override the environment."""

import pytest
from pydantic_settings import BaseSettings

import learner.cli
import proto.topics
import reward_service.cli
import serving.cli
import serving.keys
from learner.settings import Settings as LearnerSettings
from learner.settings import SFTSettings
from proto import cli
from reward_service.settings import Settings as RewardSettings
from serving.settings import Settings as ServingSettings

# (main, argv before --help, the settings whose every field is a flag)
COMMANDS = [
    (serving.cli.main, [], ServingSettings),
    (reward_service.cli.main, ["serve"], RewardSettings),
    (reward_service.cli.main, ["curve"], RewardSettings),
    (learner.cli.main, ["ppo"], LearnerSettings),
    (learner.cli.main, ["sft"], SFTSettings),
    (proto.topics.main, [], proto.topics.EnsureTopics),
    (serving.keys.main, [], serving.keys.Keys),
]


def flags(settings: type[BaseSettings]) -> list[str]:
    """The flag of each field: its name in kebab case, or its variable's for a shared fact
    (``--rlhf-state-dir``)."""
    names = []
    for name, field in settings.model_fields.items():
        if isinstance(field.validation_alias, str):
            names.append("--" + field.validation_alias.lower().replace("_", "-"))
        elif name == "kafka":
            names += ["--kafka." + f.replace("_", "-") for f in field.default_factory.model_fields]
        elif name not in ("add", "revoke", "list"):  # serving.keys' subcommands
            names.append("--" + name.replace("_", "-"))
    return names


@pytest.mark.parametrize("main, argv, settings", COMMANDS, ids=lambda c: getattr(c, "__module__", None))
def test_help_lists_every_setting_with_its_default(capsys, main, argv, settings):
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    missing = [flag for flag in flags(settings) if flag not in text]
    assert not missing, f"--help omits {missing}"
    assert "(default" in text


def test_flags_override_the_environment_and_booleans_have_a_no_form(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(reward_service.cli.Serve, "cli_cmd", lambda self: ran.append(self))
    monkeypatch.setenv("RLHF_REWARD_PORT", "9001")
    monkeypatch.setenv("RLHF_REWARD_TRAIN_BATCH_SIZE", "3")
    argv = ["serve", "--port", "9002", "--no-train", "--rlhf-state-dir", str(tmp_path),
            "--kafka.topic-prefix", "p."]
    cli.run(reward_service.cli.Main, "rlhf-reward", argv)
    (serve,) = ran
    assert (serve.port, serve.train, serve.train_batch_size) == (9002, False, 3)
    assert (serve.state_dir, serve.kafka.topic_prefix) == (tmp_path, "p.")


def test_a_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as exit:
        reward_service.cli.main([])
    assert exit.value.code != 0


def test_a_bad_setting_says_what_to_change_without_a_traceback(capsys, monkeypatch):
    monkeypatch.setenv("RLHF_REWARD_TRAIN_BATCH_SIZE", "0")
    with pytest.raises(SystemExit) as exit:
        reward_service.cli.main(["serve"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf-reward: error:") and "train_batch_size" in err and "Traceback" not in err


def test_a_bad_secret_is_refused_without_echoing_it(capsys, monkeypatch):
    monkeypatch.setenv("RLHF_SERVING_SECRET", "tooshort-but-secret")
    with pytest.raises(SystemExit) as exit:
        serving.cli.main([])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "RLHF_SERVING_SECRET must be at least 32 characters" in err and "tooshort-but-secret" not in err


def test_a_malformed_nested_flag_is_refused_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit:
        serving.cli.main(["--kafka", "notjson"])
    assert exit.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_the_keys_cli_adds_lists_and_revokes(capsys, tmp_path):
    path = tmp_path / "api_keys"
    serving.keys.main(["--api-keys-file", str(path), "add", "carol"])
    key = capsys.readouterr().out.strip()
    assert key.startswith("rlhf-") and "carol" in path.read_text()
    serving.keys.main(["--api-keys-file", str(path), "list"])
    assert capsys.readouterr().out.split() == ["carol"]
    serving.keys.main(["--api-keys-file", str(path), "revoke", "carol"])
    assert "removed 1 key(s) of carol" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="invalid user id"):
        serving.keys.main(["--api-keys-file", str(path), "add", "c d"])
