"""Convert a pretrained model into a memarch checkpoint.

    python -m memarch.convert hf PATH OUT.ckpt [--window W --n-sinks S
        --sink-positions cache|absolute --dtype bfloat16 --tokenizer TOK]
    python -m memarch.convert gguf FILE.gguf OUT.ckpt [--window W --n-sinks S
        --sink-positions cache|absolute --dtype float32]

``hf``: ``PATH`` is a local Llama / Mistral / Qwen2 directory (``config.json`` +
safetensors), read by ``memarch.models.from_hf``. ``gguf``: a llama.cpp GGUF file (``llama``
or ``qwen2``), read by ``memarch.models.from_gguf``, its tokenizer and chat template built
from the file's metadata (``memarch.data.gguf_tokenizer``). Both are exact; the attention
options turn the model into a StreamingLLM model. ``OUT.ckpt`` holds what a memarch
training checkpoint holds for the network: the model config (``memarch_model_config``), the
weights (``state_dict``, keys ``net.*``) and the tokenizer (``memarch_tokenizer``: the text
of ``PATH/tokenizer.json``, ``--tokenizer`` or the GGUF's, embedded, so the file is
self-contained), plus ``memarch_converted`` (source, overrides, dtype and the model's
trained ``context_length`` when known). So it is read by ``memarch.checkpoint.load``,
``python -m memarch.generate``, generation,
``python -m memarch.eval checkpoint=OUT.ckpt`` and ``train.py ckpt_path=OUT.ckpt``
(fine-tuning: the weights, with a fresh optimizer and step 0). The file is written to
``OUT.ckpt.tmp`` and renamed, so an interrupted run leaves no half-written checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from memarch.checkpoint import CONFIG_KEY, TOKENIZER_KEY, atomic_write, with_digest

CONVERTED_KEY = "memarch_converted"


def hf_checkpoint(path: str | os.PathLike, *, dtype=None, tokenizer: str | None = None,
                  **attention_overrides) -> dict:
    """The checkpoint dict of the Hugging Face model in ``path`` (see the module docstring).
    ``tokenizer`` None: ``path``'s tokenizer.json if there is one, else none."""
    from memarch.data.tokenizers import tokenizer_spec
    from memarch.hub import model_config
    from memarch.models.hf import from_hf, read_hf_config
    model = from_hf(path, dtype=dtype, **attention_overrides)
    hf = read_hf_config(path)
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    tok_path = tokenizer or path
    if tokenizer is None and not (Path(path) / "tokenizer.json").is_file():
        spec = None
    else:
        spec = tokenizer_spec(tok_path, eos_id=eos if isinstance(eos, int) else None)
    return {
        CONFIG_KEY: model_config(model),
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
        TOKENIZER_KEY: spec,
        CONVERTED_KEY: {"from": str(path), "model_type": hf.get("model_type"),
                        "overrides": dict(attention_overrides),
                        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                        "context_length": hf.get("max_position_embeddings")},
    }


def gguf_checkpoint(path: str | os.PathLike, *, dtype=None, **attention_overrides) -> dict:
    """The checkpoint dict of the GGUF file ``path``, its tokenizer embedded (a file without
    tokenizer metadata is refused: a converted model must be usable as it is)."""
    from memarch.data.gguf_tokenizer import gguf_tokenizer_spec
    from memarch.hub import model_config
    from memarch.models.gguf import gguf_to_hf, model_from_reader, read_gguf
    reader = read_gguf(path)                                  # read once; fail fast:
    hf = gguf_to_hf(reader)                                   # config, tokenizer,
    spec = gguf_tokenizer_spec(reader, source=str(path))     # then the weights
    model = model_from_reader(reader, hf, dtype=dtype, **attention_overrides)
    return {
        CONFIG_KEY: model_config(model),
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
        TOKENIZER_KEY: spec,
        CONVERTED_KEY: {"from": str(path), "model_type": hf["model_type"], "format": "gguf",
                        "overrides": dict(attention_overrides),
                        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                        "context_length": model.context_length},
    }


def _refuse_source(src: str | os.PathLike, out: str | os.PathLike) -> None:
    """Never write over an input: ``out`` may not be the source (file or folder), nor lie
    inside a source folder (a new file there is refused too: the folder is the model's),
    nor go through a source file (``model.gguf/x.ckpt``)."""
    s, o = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    if o == s or s in o.parents:
        where = "is the source" if o == s else "lies inside the source"
        raise ValueError(f"convert: OUT {out} would overwrite the source {src} (it {where}); "
                         "write the checkpoint somewhere else")


def _check_out(out: str | os.PathLike) -> None:
    """``out`` must be a file path whose folder can be made: refused early and by name."""
    o = Path(out).expanduser()
    if o.is_dir():
        raise ValueError(f"convert: OUT {out} is a directory; give the checkpoint's file name "
                         f"(e.g. {o / 'model.ckpt'})")
    for parent in o.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"convert: OUT {out}: {parent} is a file, not a folder")
            break


def save(ckpt: dict, out: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``out`` through ``out.tmp`` (renamed into place; removed when the
    write fails, so a failed write never leaves a half-written file behind)."""
    ckpt = with_digest(ckpt)       # loading checks it (memarch.checkpoint.read)
    return atomic_write(out, lambda tmp: torch.save(ckpt, tmp), what="checkpoint")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m memarch.convert",
                                 description="Convert a model into a memarch checkpoint.")
    sub = ap.add_subparsers(dest="source", required=True)
    for name, what, src in (
            ("hf", "a local Hugging Face Llama / Mistral / Qwen2 directory",
             "directory with config.json and *.safetensors"),
            ("gguf", "a llama.cpp GGUF file (llama, qwen2), tokenizer included",
             "the .gguf file")):
        p = sub.add_parser(name, help=what)
        p.add_argument("path", help=src)
        p.add_argument("out", help="the memarch checkpoint to write (e.g. model.ckpt)")
        p.add_argument("--window", type=int, default=None, help="attention window W")
        p.add_argument("--n-sinks", type=int, default=None, help="attention sinks S")
        p.add_argument("--sink-positions", choices=["absolute", "cache"], default=None)
        p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | float64 "
                       f"(default: {'as stored' if name == 'hf' else 'float32'})")
        if name == "hf":
            p.add_argument("--tokenizer", default=None, help="tokenizer.json or a folder "
                           "with one (default: PATH's, if present)")
    args = ap.parse_args(argv)
    over = {k: v for k, v in (("window", args.window), ("n_sinks", args.n_sinks),
                              ("sink_positions", args.sink_positions)) if v is not None}
    try:
        for src in (args.path, getattr(args, "tokenizer", None)):
            if src is not None:
                _refuse_source(src, args.out)
        _check_out(args.out)
        if args.source == "hf":
            ckpt = hf_checkpoint(args.path, dtype=args.dtype, tokenizer=args.tokenizer, **over)
        else:
            ckpt = gguf_checkpoint(args.path, dtype=args.dtype, **over)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out = save(ckpt, args.out)
    except (OSError, RuntimeError) as e:  # disk full (torch says "unexpected pos"), ...
        print(f"error: cannot write {args.out} (disk full or not writable?): "
              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}; nothing was written "
              "(an existing file there is kept)", file=sys.stderr)
        return 2
    cfg = ckpt[CONFIG_KEY]
    n = sum(v.numel() for k, v in ckpt["state_dict"].items()
            if not (k == "net.head.weight" and cfg.get("tie_embeddings")))
    print(f"wrote {out}: {ckpt[CONVERTED_KEY]['model_type']}, {len(cfg['layer_pattern'])} "
          f"layers, d_model {cfg['d_model']}, {n:,} parameters "
          f"({ckpt[CONVERTED_KEY]['dtype']}), attention {over or 'as pretrained'}, "
          f"tokenizer {'embedded' if ckpt[TOKENIZER_KEY] else 'none (pass --tokenizer)'}")
    print(f"  load:     memarch.checkpoint.load({str(out)!r}).model\n"
          f"  talk:     python -m memarch.generate {out} --chat --prompt 'Hello'\n"
          f"  evaluate: python -m memarch.eval checkpoint={out} preset=smoke\n"
          f"  finetune: python train.py ckpt_path={out} data=text data.dataset.paths=[...]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
