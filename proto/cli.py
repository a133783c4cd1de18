"""One command-line style for every service and tool: pydantic-settings' ``CliApp`` over the settings classes.

A command is a settings class with a ``cli_cmd`` method; a program with several commands is a class whose
fields are ``CliSubCommand[...]`` (``rlhf-learner ppo|sft``, ``rlhf-reward serve|curve``). Every field of a
command is a flag in kebab case (``--batch-size 4``; booleans as ``--train``/``--no-train``; nested
settings as ``--kafka.topic-prefix``) and ``--help`` lists them all with their descriptions and defaults.
A value comes from, in rising priority: the field's default, its environment variable, the flag.
"""

import logging
import sys

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliApp, CliSettingsSource, SettingsError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run(
    command: type[BaseSettings], prog: str, argv: list[str] | None = None, log_level: int = logging.INFO
) -> BaseSettings:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``command``, send log lines of ``log_level`` and above
    to stderr, and run its ``cli_cmd``; returns the command's settings.

    ``prog`` is the program name ``--help`` shows. A bad flag prints the usage, and a setting that fails
    validation (from a flag or the environment) prints what is wrong with it; both exit with status 2
    (argparse's convention).
    """
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    # case_sensitive=False: the shared settings' aliases (RLHF_STATE_DIR) become lower-case flags too
    source = CliSettingsSource(command, cli_prog_name=prog, cli_kebab_case=True, cli_implicit_flags=True,
                               case_sensitive=False)
    try:
        args = sys.argv[1:] if argv is None else argv
        return CliApp.run(command, cli_args=args, cli_settings_source=source)
    except (ValidationError, SettingsError) as exc:
        # An operator's mistake, not a bug: what to change, without a traceback or the value given (a secret)
        print(f"{prog}: error: {describe(exc)}", file=sys.stderr)
        sys.exit(2)


def describe(exc: ValidationError | SettingsError) -> str:
    """Each invalid setting as ``field: what is wrong`` (joined by "; "), never echoing the value given."""
    if isinstance(exc, SettingsError):
        return str(exc)
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    )
