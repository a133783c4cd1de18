"""The learner's tests. Imported before their conftest, so before torch loads OpenMP (when these tests are
the first to import torch): as learner/cli.py does, make idle OpenMP workers sleep instead of spin, which
on a shared 2-core machine made forward/backward passes ten times faster."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
