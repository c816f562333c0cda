"""Convert a GGUF chat model into a plain fp32 safetensors Hugging Face folder that vLLM can load.

    python deploy/local/convert_gguf.py --gguf path/to/Model.Q4_1.gguf --out .cache/models/Model

transformers dequantizes the GGUF on load (``gguf_file=``). The loaded model carries a GGUF
``quantization_config``, so a fresh model is built from the config without it, gets the dequantized state
dict and is saved with ``save_pretrained``. The tokenizer (with the chat template from the GGUF metadata) and a
generation config are saved beside it. The folder is written to a temporary sibling and renamed into place, so a
half-written folder never looks converted; ``.converted`` marks a finished conversion.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# ChatML, the template SmolLM2-Instruct uses; only a fallback for a GGUF without tokenizer.chat_template.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.monotonic()
    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    print(f"loaded + dequantized {gguf.name} in {time.monotonic() - t0:.1f} s", flush=True)

    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # a tied lm_head may show up as missing; anything else means the conversion is wrong
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()

    if not tokenizer.chat_template:
        print("GGUF has no chat template: using ChatML", flush=True)
        tokenizer.chat_template = CHATML

    gen = GenerationConfig.from_model_config(config)
    if tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
    model.generation_config = gen

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    gen.save_pretrained(tmp)
    _portable_tokenizer_config(tmp / "tokenizer_config.json", config)

    # sanity: the saved folder reloads, and the chat template renders a generation prompt
    check = AutoTokenizer.from_pretrained(str(tmp))
    prompt = check.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    if "<|im_start|>assistant" not in prompt:
        raise SystemExit(f"chat template does not render a ChatML generation prompt: {prompt!r}")

    (tmp / ".converted").write_text(f"{gguf}\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    print(f"wrote {out} ({size:.0f} MB) in {time.monotonic() - t0:.1f} s", flush=True)


def _portable_tokenizer_config(path: Path, config: object) -> None:
    """Name a tokenizer class that transformers 4 and 5 both load, and drop load-time flags saved with it."""
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    data["model_max_length"] = int(getattr(config, "max_position_embeddings", 2048))
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        parser.error(f"no such GGUF: {args.gguf}")
    convert(args.gguf.resolve(), args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
