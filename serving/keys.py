"""``python -m serving.keys add|revoke|list``: manage the API keys serving accepts (the file's format is
:mod:`proto.api_keys`).

    python -m serving.keys add alice            # prints alice's new key once, appends its hash
    python -m serving.keys revoke alice         # removes every key of alice
    python -m serving.keys list                 # user ids that have keys
    python -m serving.keys --api-keys-file F add alice   # another file than serving's default

The file is serving's ``RLHF_SERVING_API_KEYS_FILE``, else ``<state>/serving/api_keys``.
"""

import logging
import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    CliPositionalArg,
    CliSubCommand,
    SettingsConfigDict,
    get_subcommand,
)

from proto import cli
from proto.api_keys import KeyFile, default_path
from proto.settings import state_dir


def default_file() -> Path:
    """The keys file serving reads by default: ``<$RLHF_STATE_DIR>/serving/api_keys``."""
    return default_path(state_dir())


class Add(BaseSettings):
    """Make a key for a user id and print it (it is shown only this once)."""

    user_id: CliPositionalArg[str] = Field(description="1-128 of A-Z a-z 0-9 . _ @ -")


class Revoke(BaseSettings):
    """Remove every key of a user id."""

    user_id: CliPositionalArg[str]


class List(BaseSettings):
    """Print the user ids that have keys."""


class Keys(BaseSettings):
    """Manage serving's API keys."""

    model_config = SettingsConfigDict(env_prefix="RLHF_SERVING_", extra="ignore")

    api_keys_file: Path = Field(
        default_factory=default_file,
        description="the keys file serving reads ($RLHF_SERVING_API_KEYS_FILE; default "
        "<state_dir>/serving/api_keys)",
    )
    add: CliSubCommand[Add]
    revoke: CliSubCommand[Revoke]
    list: CliSubCommand[List]

    def cli_cmd(self) -> None:
        keys = KeyFile(self.api_keys_file)
        command = get_subcommand(self)  # exits with the usage when none is given
        if isinstance(command, Add):
            try:
                print(keys.add(command.user_id))
            except ValueError as exc:
                sys.exit(str(exc))
            print(f"key for {command.user_id} added to {keys.path}; send it as 'Authorization: Bearer <key>'",
                  file=sys.stderr)
        elif isinstance(command, Revoke):
            print(f"removed {keys.revoke(command.user_id)} key(s) of {command.user_id} from {keys.path}",
                  file=sys.stderr)
        else:
            print("\n".join(keys.users()))


def main(argv: list[str] | None = None) -> None:
    cli.run(Keys, "python -m serving.keys", argv, log_level=logging.WARNING)


if __name__ == "__main__":
    main()
