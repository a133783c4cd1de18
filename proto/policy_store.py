"""The checkpoint-store contract between the learner (writes policies) and serving (loads them).

A published policy is a plain Hugging Face directory (config, ``*.safetensors``, tokenizer files) named by
a ``checkpoint_uri``; ``weights_sha256`` in its PolicyVersion record is the sha256 of the directory's
``*.safetensors`` files concatenated in name order. Only ``file://`` URIs (a local or shared disk) resolve
here; object storage adds a scheme that downloads to a local directory.
"""

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse


def weights_sha256(model_dir: Path) -> str:
    """sha256 (hex) of ``model_dir``'s ``*.safetensors`` files, concatenated in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def local_dir(uri: str) -> Path:
    """The local directory holding the policy at ``uri``.

    Raises ``ValueError`` for a URI whose scheme has no resolver here (only ``file://`` has).
    """
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError(f"cannot resolve checkpoint URI {uri!r}: only file:// URIs are supported")
    return Path(unquote(parsed.path))
