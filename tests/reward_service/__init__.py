"""The reward service's tests. Imported before their conftest, so before torch loads OpenMP when these
tests run first: as reward_service/cli.py does, idle OpenMP workers sleep instead of spinning, which on a
shared 2-core machine keeps forward passes from slowing down several times."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
