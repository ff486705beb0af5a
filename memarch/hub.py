"""Save and load memarch models in the ecosystem's format: a folder with ``config.json`` and
``model.safetensors``, as Hugging Face's ``save_pretrained`` / ``from_pretrained`` write them.

    from memarch.hub import save_pretrained, from_pretrained, push_to_hub
    save_pretrained(model, "out/my-model")        # config.json + model.safetensors
    model = from_pretrained("out/my-model")        # the same network, in eval mode
    push_to_hub(model, "me/my-model")              # the same folder, uploaded

Why not ``huggingface_hub.PyTorchModelHubMixin``: the mixin stores the constructor's
arguments as JSON, and ``MemLM``'s ``mixers`` are factories (classes, ``functools.partial``
objects, Hydra's ``_partial_: true`` objects) that JSON cannot hold. Here ``config.json`` is
the model config in memarch's Hydra ``_target_`` format (the one a training checkpoint keeps),
built from the models' ``init_kwargs``; it is rebuilt with ``memarch.config.instantiate``,
which builds allow-listed ``_target_``s only, and the weights are safetensors (no pickle), so
loading a folder never runs code from it. ``push_to_hub`` uploads that same folder with
``huggingface_hub.HfApi`` (imported only there).

``config.json`` = the model config plus a ``"memarch"`` entry: ``{"format": 1, "version",
"class", "dtype", "sha256"}`` (``dtype``: the parameters' dtype when they share one; loading
casts to it; ``sha256``: each tensor's name -> the sha256 of its bytes in
``model.safetensors``, which ``from_pretrained`` checks, refusing a corrupted file by the
tensor's name; folders written before it, and Hugging Face folders, load unchecked).
``save_pretrained`` refuses to write into the folder (or GGUF file) the model was read from by
``from_hf`` / ``from_gguf``: that would replace the source's files.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import memarch
from memarch.config import TargetNotAllowedError, instantiate, read_json_object, resolve

__all__ = ["model_config", "save_pretrained", "from_pretrained", "push_to_hub",
           "PretrainedError", "CONFIG_NAME", "WEIGHTS_NAME", "FORMAT"]

CONFIG_NAME, WEIGHTS_NAME, FORMAT = "config.json", "model.safetensors", 1
DIGEST_KEY = "sha256"     # config.json's memarch.sha256: {tensor name: sha256 of its bytes}


class PretrainedError(ValueError):
    """A folder cannot be read as a saved memarch model (its config or weights)."""


# -- config -------------------------------------------------------------------------------
def model_config(model: nn.Module) -> dict:
    """The model's config in memarch's ``_target_`` format, from ``init_kwargs``;
    ``memarch.config.instantiate(model_config(m))`` builds the same network."""
    if not hasattr(model, "init_kwargs"):
        raise TypeError(f"model_config: {type(model).__name__} has no init_kwargs (memarch "
                        "models record their constructor arguments there)")
    return _to_config(model, "model")


def _to_config(v: Any, key: str) -> Any:
    if isinstance(v, nn.Module):
        if not isinstance(getattr(v, "init_kwargs", None), Mapping):
            raise TypeError(f"model_config: {key} is a {type(v).__name__} module without "
                            "init_kwargs; it cannot be written as a config")
        return {"_target_": _target(type(v), key), **_to_config(v.init_kwargs, key)}
    if isinstance(v, functools.partial):        # also Hydra's _partial_: true objects
        if v.args:
            raise TypeError(f"model_config: {key} is a partial with positional arguments "
                            f"{v.args!r}; give them by keyword")
        return {"_target_": _target(v.func, key), "_partial_": True,
                **_to_config(v.keywords, key)}
    if isinstance(v, type):
        return {"_target_": _target(v, key), "_partial_": True}
    if isinstance(v, Mapping):                  # dict, OmegaConf's DictConfig
        bad = [k for k in v if not isinstance(k, str)]
        if bad:
            raise TypeError(f"model_config: {key} has non-string keys {bad!r}")
        return {k: _to_config(x, f"{key}.{k}") for k, x in v.items()}
    if isinstance(v, Sequence) and not isinstance(v, (str, bytes)):   # tuple, ListConfig
        return [_to_config(x, f"{key}[{i}]") for i, x in enumerate(v)]
    if v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float)
                                                        and math.isfinite(v)):
        return v
    raise TypeError(f"model_config: {key} = {v!r:.80} ({type(v).__module__}."
                    f"{type(v).__qualname__}) cannot be written to a JSON config")


def _target(obj: Any, key: str) -> str:
    """The dotted name of a class, the public one when a parent package re-exports it
    (``memarch.mixers.Attention``); checked to resolve back to ``obj`` as a loader would."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(mod, str) and isinstance(qual, str)):
        raise TypeError(f"model_config: {key} = {obj!r:.80} has no importable name")
    parts = mod.split(".")
    path = next((f"{'.'.join(parts[:i])}.{qual}" for i in range(1, len(parts))
                 if getattr(sys.modules.get(".".join(parts[:i])), qual, None) is obj),
                f"{mod}.{qual}")
    try:
        found = resolve(path)
    except TargetNotAllowedError as e:
        raise TargetNotAllowedError(f"model_config: {key}: {e}") from None
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is not obj:
        raise TypeError(f"model_config: {key} = {obj!r:.80} cannot be imported as {path!r} "
                        "(a class defined in a function?)")
    return path


# -- save ---------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *,
                    safe_serialization: bool = True) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``save_directory`` (created).
    Each file is written under a temporary name and renamed, so a failed save never leaves
    a half-written file in place of a good one. Returns the folder."""
    if not safe_serialization:
        raise ValueError("save_pretrained: memarch writes safetensors only "
                         "(safe_serialization=True), so loading never unpickles")
    from safetensors.torch import save_model

    out = Path(save_directory)
    _refuse_sources(model, out)
    if out.exists() and not out.is_dir():
        raise PretrainedError(f"save_pretrained: {out} is a file, not a folder")
    cfg = model_config(model)
    dtypes = {p.dtype for p in model.state_dict().values() if p.is_floating_point()}
    cfg["memarch"] = {"format": FORMAT, "version": getattr(memarch, "__version__", "0.1.0"),
                      "class": cfg["_target_"],
                      "dtype": str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1
                      else None}
    out.mkdir(parents=True, exist_ok=True)
    tmp = {name: out / f".{name}.{os.getpid()}.tmp" for name in (CONFIG_NAME, WEIGHTS_NAME)}
    try:
        save_model(model, str(tmp[WEIGHTS_NAME]))
        cfg["memarch"][DIGEST_KEY] = tensor_digests(tmp[WEIGHTS_NAME])   # of what was written
        text = json.dumps(cfg, indent=2, sort_keys=True, allow_nan=False) + "\n"
        tmp[CONFIG_NAME].write_text(text)
        for name, t in tmp.items():
            os.replace(t, out / name)
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    return out


def _refuse_sources(model: nn.Module, out: Path) -> None:
    """Never write into what the model was read from: a Hugging Face folder (``from_hf``,
    its files would be replaced by memarch's) or a GGUF file (``from_gguf``)."""
    o = out.expanduser().resolve()
    for m in model.modules():
        src = getattr(m, "_memarch_source", None)
        if src is None:
            continue
        src = Path(src)
        if o == src or src in o.parents:
            raise PretrainedError(
                f"save_pretrained: {out} {'is' if o == src else 'lies inside'} {src}, the "
                "source the model was read from; writing there would replace the source's "
                "files: save it somewhere else")


def tensor_digests(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of each tensor's bytes in the safetensors file ``path`` (name -> hex digest),
    read from the file's own byte ranges (so they describe what is on disk)."""
    import hashlib
    import mmap
    import struct

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise PretrainedError(f"{path}: not a safetensors file (shorter than its header)")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            raise PretrainedError(f"{path}: not a safetensors file or truncated (header of "
                                  f"{n} bytes in a file of {size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise PretrainedError(f"{path}: not a safetensors file ({e})") from None
        if not isinstance(header, dict):
            raise PretrainedError(f"{path}: not a safetensors file (its header is not a map)")
        out = {}
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as mv:
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                try:
                    b, e = (int(x) for x in info["data_offsets"])
                except (TypeError, KeyError, ValueError):
                    raise PretrainedError(f"{path}: tensor {name!r} has no valid "
                                          "data_offsets") from None
                if not 0 <= b <= e <= size - 8 - n:
                    raise PretrainedError(f"{path}: tensor {name!r} runs past the end of the "
                                          "file (truncated)")
                with mv[8 + n + b:8 + n + e] as view:
                    out[name] = hashlib.sha256(view).hexdigest()
    return out


def _check_digests(path: Path, recorded: Any) -> None:
    """Refuse a weights file whose tensors' bytes differ from the digests ``save_pretrained``
    recorded in ``config.json`` (``memarch.sha256``), naming the tensors."""
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise PretrainedError(f"{path.parent / CONFIG_NAME}: memarch.{DIGEST_KEY} must map "
                              "tensor names to sha256 hex digests")
    found = tensor_digests(path)
    bad = sorted(k for k in recorded if k in found and found[k] != recorded[k])
    missing = sorted(set(recorded) - set(found))
    if bad or missing:
        what = (f"the bytes of {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''} differ from "
                "the sha256 recorded when it was saved" if bad else "") + \
            ("; " if bad and missing else "") + \
            (f"tensors {missing[:8]} recorded when it was saved are missing" if missing else "")
        raise PretrainedError(f"{path}: corrupted: {what} (memarch.{DIGEST_KEY} in "
                              f"{CONFIG_NAME}); restore the folder from a good copy")


# -- load ---------------------------------------------------------------------------------
def from_pretrained(directory: str | os.PathLike, *, map_location: Any = "cpu",
                    dtype: torch.dtype | None = None, strict: bool = True) -> nn.Module:
    """The model saved in ``directory`` by ``save_pretrained``, in eval mode, on
    ``map_location``, in ``dtype`` (default: the dtype it was saved in). A Hugging Face
    transformers folder (``model_type``, no ``_target_``) goes to ``memarch.models.from_hf``."""
    directory = Path(directory)
    cfg = _read_config(directory)
    if "_target_" not in cfg and "model_type" in cfg:
        import memarch.models as models  # lazy: from_hf imports the converter
        from_hf = getattr(models, "from_hf", None)
        if from_hf is None:
            raise PretrainedError(
                f"{directory / CONFIG_NAME}: a Hugging Face transformers config (model_type "
                f"{cfg['model_type']!r}), not a memarch one; convert it with "
                "memarch.models.from_hf")
        return from_hf(directory, dtype=dtype).to(map_location).eval()
    meta = cfg.pop("memarch", None)
    if "_target_" not in cfg or not isinstance(meta, dict):
        raise PretrainedError(f"{directory / CONFIG_NAME}: not a memarch model config (it needs "
                              "a _target_ and a 'memarch' entry, as save_pretrained writes)")
    if meta.get("format") != FORMAT:
        raise PretrainedError(
            f"{directory / CONFIG_NAME}: unknown format {meta.get('format')!r} (written by "
            f"memarch {meta.get('version')}); this memarch "
            f"{getattr(memarch, '__version__', '?')} reads format {FORMAT}")
    try:
        model = instantiate(cfg)
    except TargetNotAllowedError as e:
        raise TargetNotAllowedError(f"{directory / CONFIG_NAME}: {e}") from None
    except Exception as e:
        raise PretrainedError(f"{directory / CONFIG_NAME}: cannot build the model from its "
                              f"config: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise PretrainedError(f"{directory / CONFIG_NAME}: its config builds a "
                              f"{type(model).__name__}, not a torch.nn.Module")
    model.to(device=map_location, dtype=dtype or _saved_dtype(meta, directory))
    _load_weights(model, directory / WEIGHTS_NAME, map_location, strict)
    if DIGEST_KEY in meta:              # folders saved before digests load unchecked
        _check_digests(directory / WEIGHTS_NAME, meta[DIGEST_KEY])
    return model.eval()


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"from_pretrained: no {CONFIG_NAME} in {directory} "
                                f"({'no such folder' if not directory.is_dir() else 'missing'}"
                                "; save_pretrained writes it)")
    return read_json_object(path, owner="from_pretrained", error=PretrainedError)


def _saved_dtype(meta: dict, directory: Path) -> torch.dtype | None:
    name = meta.get("dtype")
    if name is None:
        return None
    dt = getattr(torch, name, None) if isinstance(name, str) else None
    if not (isinstance(dt, torch.dtype) and dt.is_floating_point):
        raise PretrainedError(f"{directory / CONFIG_NAME}: memarch.dtype {name!r} is not a "
                              "torch floating dtype")
    return dt


def _load_weights(model: nn.Module, path: Path, map_location: Any, strict: bool) -> None:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    if not path.is_file():
        raise FileNotFoundError(f"from_pretrained: weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise PretrainedError(f"{path}: not a safetensors file or truncated ({e})") from None
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    bad = [f"{k}: file {s}, config {want[k]}" for k, s in shapes.items()
           if k in want and want[k] != s]
    if bad:
        raise PretrainedError(f"{path}: weights do not fit the model its config.json builds "
                              f"(shapes differ): {'; '.join(bad)}")
    try:
        load_model(model, str(path), strict=strict, device=str(map_location))
    except RuntimeError as e:
        raise PretrainedError(f"{path}: weights do not fit the model its config.json "
                              f"builds: {e}") from None


# -- hub ----------------------------------------------------------------------------------
def push_to_hub(model: nn.Module, repo_id: str, *, private: bool | None = None,
                token: str | None = None, commit_message: str = "Upload memarch model"):
    """``save_pretrained`` into a temporary folder and upload it to the Hugging Face Hub
    repo ``repo_id`` (created if missing). Returns ``upload_folder``'s commit info."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError("push_to_hub needs huggingface_hub: pip install huggingface_hub") \
            from None
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp,
                                 commit_message=commit_message)


class HubMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` as model methods (MemLM,
    HMT); they call the functions above."""

    def save_pretrained(self, save_directory, **kw) -> Path:
        return save_pretrained(self, save_directory, **kw)

    @classmethod
    def from_pretrained(cls, directory, **kw):
        model = from_pretrained(directory, **kw)
        if not isinstance(model, cls):
            raise TypeError(f"{cls.__name__}.from_pretrained: {directory} holds a "
                            f"{type(model).__name__}, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, **kw):
        return push_to_hub(self, repo_id, **kw)
