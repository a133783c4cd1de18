"""Where the benches put what they measure: ``bench/results/`` (gitignored), one JSON file per run.

Each bench names its file ``<bench>-<time>.json`` and prints the path, so a reader of its README finds the
run by that pattern; the time is UTC, so runs on machines in other time zones sort together.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def utc_stamp(fmt: str = "%Y%m%d-%H%M%S") -> str:
    """Now, in UTC, as ``fmt`` (the benches that already wrote ``%Y%m%dT%H%M%SZ`` keep it)."""
    return datetime.now(UTC).strftime(fmt)


def write_json(name: str, data, out_dir: Path = RESULTS, **dumps) -> Path:
    """Write ``data`` to ``<out_dir>/<name>.json``, making the folder if need be, and return the path.

    ``dumps`` go to ``json.dumps``; ``indent=1`` unless given (``indent=None`` for a file read only by
    programs, such as bench/ppo's reusable batch).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, **{"indent": 1, **dumps}))
    return path
