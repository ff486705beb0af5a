"""Load a trained network from a training checkpoint without Lightning or Hydra.

Training checkpoints (Lightning's) carry the resolved model config under
``"memarch_model_config"`` and the training data's tokenizer under ``"memarch_tokenizer"``;
``load`` rebuilds the network from it with ``memarch.config.instantiate`` and loads the
weights (the LightningModule stores the network as ``net``, so its keys start with
``"net."``).

Loading never runs code from the file: ``read`` unpickles with ``torch.load(weights_only=True)``
(tensors, numbers, strings, containers: all a memarch training checkpoint holds, RNG and
optimizer states included, so no extra safe globals are needed), and the
config builds only allow-listed ``_target_``s (see ``memarch.config``). A file that is not a
checkpoint, is truncated, or holds other Python objects raises ``CheckpointError`` (a
ValueError) naming the path.

``load(path, overrides={"mixers.attn.window": 256, "mixers.attn.n_sinks": 4})`` rebuilds the
model with shape-free constructor arguments changed (``memarch.overrides``: StreamingLLM's
dense-trained model evaluated with a window and sinks); the weights then load strictly, the
proof that no parameter shape changed, and ``Loaded.config`` is the changed config.

Digest: checkpoints written by memarch's training (``memarch.lit.io.AtomicCheckpointIO``,
through ``with_digest``; not FSDP's sharded folders) record a SHA-256 of every tensor they
hold (the weights, the optimizer state, the RNG and carried states) under
``"memarch_digest"``, and ``read`` (so ``load``, resuming with ``ckpt_path=`` and
``memarch.eval``) recomputes it and refuses a file whose tensors changed after it was written
(``CheckpointError`` naming the tensors, e.g. ``state_dict/net.embed.weight``). A checkpoint
without a digest (older ones, or written by other tools) loads as before.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from memarch.config import TargetNotAllowedError, instantiate
from memarch.overrides import apply_overrides, parse_overrides

CONFIG_KEY = "memarch_model_config"
TOKENIZER_KEY = "memarch_tokenizer"   # the training data's tokenizer name/path (None: token task)
DIGEST_KEY = "memarch_digest"         # {"algorithm": "sha256", "tensors": {name: hexdigest}}
_ALGORITHM = "sha256"
_PARALLEL_BYTES = 64 << 20            # hash a checkpoint this large on several threads


class CheckpointError(ValueError):
    """The file cannot be read as a memarch checkpoint (corrupt, truncated or unsafe)."""


class Loaded(NamedTuple):
    model: torch.nn.Module
    config: dict
    checkpoint: dict


def atomic_write(path: str | Path, write: Callable[[Path], Any], *, what: str = "file") -> Path:
    """Write ``path`` through ``<path>.tmp``: ``write(tmp)`` fills the temporary file, then
    ``os.replace`` puts it in place (atomic on POSIX), so a crash, SIGKILL or failed write
    leaves the previous file (or none), never a half-written one. The one writer of every
    file memarch saves (checkpoints, converted models, results JSON).

    A failed write removes ``.tmp`` and raises ``OSError`` naming ``what``, the path and the
    cause: torch's writer reports a full disk as a ``RuntimeError`` ("enforce fail at
    inline_container.cc ... unexpected pos"), which is translated, with the free space."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot save {what} {path}: {e.strerror or e}; {kept}") from e
        if isinstance(e, RuntimeError) and ("inline_container" in str(e) or "write" in str(e)):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.EIO, f"cannot save {what} {path}: the write failed ({e}); "
                                     f"{free / 2 ** 20:.0f} MiB free on its disk (a full disk "
                                     f"or quota?); {kept}") from e
        raise
    return path


def read(path: str | Path, *, map_location: Any = "cpu", mmap: bool = False,
         verify: bool | None = None) -> dict:
    """The checkpoint dict in ``path``, unpickled with ``weights_only=True``; ``mmap=True``
    maps the tensors instead of reading them (to look at the config of a large file).

    ``verify``: check the tensors against the checkpoint's digest (if it has one), raising
    ``CheckpointError`` naming those that changed; default: unless ``mmap`` (a look at the
    config should not read every byte)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, not a checkpoint file "
                              "(pass e.g. .../checkpoints/last.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    with open(path, "rb") as f:                 # a permission error is reported as such
        try:
            ckpt = torch.load(str(path) if mmap else f, map_location=map_location,
                              weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            # torch's weights-only unpickler names a refused class/function as
            # "GLOBAL mod.name"; any other unpickling error means bytes that are not a pickle
            why = next((ln.strip() for ln in str(e).splitlines()
                        if any(w in ln for w in ("GLOBAL", "unrecognized function",
                                                 "Unsupported global"))),
                       None)
            if why is None:
                raise _corrupt(path, e) from None
            raise CheckpointError(
                f"checkpoint {path}: refused: it holds Python objects other than tensors and "
                f"plain data, which could run code when loaded ({why}); memarch loads "
                "checkpoints with torch.load(weights_only=True) only") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
                AttributeError) as e:           # what torch's zip/pickle readers raise
            raise _corrupt(path, e) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: not a memarch checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict)")
    if verify or (verify is None and not mmap):
        verify_digest(ckpt, path)
    return ckpt


# -- digest ---------------------------------------------------------------------------------
def _tensors(obj: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in a checkpoint's containers, named by their path
    (``state_dict/net.embed.weight``, ``optimizer_states/0/state/3/exp_avg``)."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not name and k == DIGEST_KEY:
                continue
            yield from _tensors(v, f"{name}/{k}" if name else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{name}/{i}" if name else str(i))


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (a copy to the CPU if it is elsewhere)."""
    h = hashlib.new(_ALGORITHM)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    t = t.detach()
    if t.layout is not torch.strided or t.is_meta or t.is_quantized:
        h.update(b"unhashed:" + str(t.layout).encode())
        return h.hexdigest()
    t = t.cpu().reshape(-1)                 # contiguous (a copy only when it is not)
    if t.numel():
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def _digests(tensors: list[torch.Tensor]) -> list[str]:
    """``tensor_digest`` of each, on a few threads for a large checkpoint (hashlib releases
    the GIL while it hashes)."""
    size = sum(t.numel() * t.element_size() for t in tensors)
    workers = min(8, os.cpu_count() or 1, len(tensors))
    if size < _PARALLEL_BYTES or workers < 2:
        return [tensor_digest(t) for t in tensors]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(tensor_digest, tensors))


def digest(checkpoint: Mapping) -> dict:
    """The digest ``with_digest`` records: ``{"algorithm", "tensors": {name: hex}}``."""
    found = dict(_tensors(checkpoint))
    return {"algorithm": _ALGORITHM,
            "tensors": dict(zip(found, _digests(list(found.values()))))}


def with_digest(checkpoint: Mapping) -> dict:
    """A shallow copy of ``checkpoint`` with the digest of its tensors under ``DIGEST_KEY``
    (checked by ``read``)."""
    out = {k: v for k, v in checkpoint.items() if k != DIGEST_KEY}
    out[DIGEST_KEY] = digest(out)
    return out


def verify_digest(checkpoint: Mapping, path: str | Path = "?") -> None:
    """Raise ``CheckpointError`` naming every tensor of ``checkpoint`` that does not match its
    recorded digest (or that was added or removed). No digest recorded: nothing to check."""
    rec = checkpoint.get(DIGEST_KEY)
    if rec is None:
        return
    if not isinstance(rec, Mapping) or not isinstance(rec.get("tensors"), Mapping) \
            or rec.get("algorithm") != _ALGORITHM:
        raise CheckpointError(f"checkpoint {path}: corrupted: its {DIGEST_KEY!r} entry is not "
                              f"a {_ALGORITHM} digest of its tensors")
    want = rec["tensors"]
    have = dict(_tensors(checkpoint))
    got = dict(zip(have, _digests(list(have.values()))))
    bad = [n for n in have if want.get(n) != got[n]]
    bad += [f"{n} (missing)" for n in want if n not in have]
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise CheckpointError(
            f"checkpoint {path}: corrupted: {len(bad)} tensor(s) differ from the digest "
            f"recorded when it was saved: {shown}. The file was damaged after it was "
            "written (disk, copy or edit); use another checkpoint (an earlier step_*.ckpt) "
            "or a backup")


def _corrupt(path: Path, e: Exception) -> CheckpointError:
    """One short line: torch's messages run on with advice that does not apply here."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "Unsupported operand" in ln), lines[0] if lines else "")
    detail = detail.split(". ")[0][:160]
    if path.stat().st_size == 0:
        detail = "the file is empty"
    return CheckpointError(f"checkpoint {path}: not a memarch checkpoint or truncated "
                           f"({type(e).__name__}: {detail})")


def load(path: str | Path, *, map_location: Any = "cpu", strict: bool = True,
         overrides: str | Mapping[str, Any] | None = None) -> Loaded:
    """Rebuild the network in ``path`` (eval mode). Returns (model, config, raw checkpoint).

    ``overrides``: shape-free constructor arguments to change before the model is built,
    as dotted keys (``{"mixers.attn.window": 256}``), a nested dict or a YAML string (see
    ``memarch.overrides.apply_overrides``); with any, the weights load strictly whatever
    ``strict`` says, and the returned config is the changed one (the raw checkpoint keeps
    the stored one)."""
    overrides = parse_overrides(overrides)      # a malformed value fails before reading
    ckpt = read(path, map_location=map_location)
    if CONFIG_KEY not in ckpt:
        raise ValueError(f"checkpoint {path}: no {CONFIG_KEY!r} entry; it was not written by "
                         "memarch's training (memarch.lit.LitLM)")
    cfg = ckpt[CONFIG_KEY]
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise CheckpointError(f"checkpoint {path}: its {CONFIG_KEY!r} entry must be a model "
                              f"config (a dict with a _target_), got {cfg!r:.200}")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint {path}: no 'state_dict' entry with the weights "
                              f"(got {type(sd).__name__})")
    if overrides:
        try:
            cfg = apply_overrides(cfg, overrides)
        except ValueError as e:
            raise type(e)(f"checkpoint {path}: {e}") from None
        strict = True                           # the proof that no parameter shape changed
    try:
        model = instantiate(cfg)
    except TargetNotAllowedError as e:
        raise TargetNotAllowedError(f"checkpoint {path}: {e}") from None
    except Exception as e:
        if overrides:                           # the constructor refuses an override's value
            raise ValueError(f"checkpoint {path}: model_overrides {overrides}: the model "
                             f"cannot be built with them: {type(e).__name__}: {e}") from e
        # re-raised with the config for context
        raise ValueError(f"checkpoint {path}: cannot rebuild the model from its config "
                         f"{cfg!r}: {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"checkpoint {path}: its config builds a "
                              f"{type(model).__name__}, not a torch.nn.Module")
    sd = {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        changed = (f" with model_overrides {overrides} (which load the weights strictly)"
                   if overrides else "")
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model its config "
                              f"builds{changed}: {e}") from None
    return Loaded(model.eval(), cfg, ckpt)
