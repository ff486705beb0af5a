"""lm-evaluation-harness adapter: memarch models as the lm-eval model ``memarch``.

Command line (lm-eval has no plugin or entry-point discovery for models: its CLI only knows
its own registry, so this module registers ``memarch`` and then runs lm-eval's CLI; every
argument is lm-eval's own)::

    python -m memarch.eval.lm_eval_adapter --model memarch \\
        --model_args checkpoint=outputs/.../last.ckpt,device=cuda,chunk_size=2048 \\
        --tasks hellaswag lambada_openai --output_path results/

Python::

    import lm_eval
    from memarch.eval.lm_eval_adapter import MemarchLM      # registers "memarch"
    lm_eval.simple_evaluate(model="memarch", model_args={"checkpoint": "last.ckpt"}, ...)
    lm_eval.simple_evaluate(model=MemarchLM(model=EvalModel(net, "byte")), tasks=[...])

``model_args``: ``checkpoint`` (a training checkpoint), ``tokenizer`` (default: the one the
checkpoint was trained with, else bytes), ``device`` (default cuda when available, else cpu),
``dtype``, ``chunk_size`` (tokens per forward call), ``max_length`` (default None: no
truncation), ``max_gen_toks`` (default 256), ``prefix_token_id`` (default the tokenizer's
end-of-text id). Programmatic use also takes ``model=EvalModel`` or ``net=<module>``.

Semantics:

* ``loglikelihood``: the sum of ``log p(continuation | context)`` over the continuation's
  tokens and whether every one of them is the argmax (``is_greedy``), via
  ``EvalModel.token_logprobs`` over context + continuation. Tokenization as lm-eval's HF
  model: trailing spaces of the context move to the continuation, the continuation's tokens
  are those of ``encode(context + continuation)`` after the first ``len(encode(context))``,
  and an empty context is the end-of-text token. Requests are processed one at a time; the
  model state after a context (all but its last token) is computed once and reused for every
  continuation of that context (multiple-choice answers), which the model's chunking
  invariance makes exact.
* ``loglikelihood_rolling``: the whole document after the end-of-text token, streamed chunk
  by chunk through the model state. No rolling windows: a stateful model conditions every
  token on the entire document prefix (lm-eval's windows only exist to bound a
  fixed-context model; ``max_length`` does not apply here). Attention layers without a
  window keep a KV cache that grows with the document.
* ``generate_until``: greedy decoding (``do_sample=True`` or a temperature > 0 raise) of up
  to ``max_gen_toks`` tokens; decoding stops at the end-of-text token or as soon as the text
  contains one of the ``until`` strings, and the text is cut before the first of them.
* ``max_length`` (when set) truncates from the left as lm-eval's HF model does: context +
  continuation to ``max_length + 1`` tokens, a generation prompt to
  ``max_length - max_gen_toks`` tokens.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own lazy model entries, before ours is added)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from memarch.eval.io import progress
from memarch.eval.model import EvalModel

__all__ = ["MemarchLM", "TaskDataError", "main", "task_data_message"]

log = logging.getLogger(__name__)


def _opt_int(value: Any, name: str, *, minimum: int = 1) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"memarch: {name} must be an integer, got {value!r}") from None
    if v < minimum or (isinstance(value, float) and v != value):
        raise ValueError(f"memarch: {name} must be an integer >= {minimum}, got {value!r}")
    return v


@register_model("memarch")
class MemarchLM(LM):
    """An lm-eval ``LM`` over a memarch ``EvalModel`` (see the module docstring).

    Give exactly one of ``checkpoint`` (a training checkpoint path), ``model`` (an
    ``EvalModel``; ``tokenizer``, ``device``, ``dtype`` and ``chunk_size`` are then its own)
    or ``net`` (a network with ``forward(ids, state) -> (logits, state, aux)``).
    ``batch_size`` and ``max_batch_size`` are accepted for lm-eval's CLI and ignored:
    requests run one at a time through the model state.
    """

    def __init__(self, checkpoint: str | None = None, *, model: EvalModel | None = None,
                 net: torch.nn.Module | None = None, tokenizer: str | None = None,
                 device: str | None = None, dtype: str | None = None,
                 chunk_size: int = 2048, max_length: int | None = None,
                 max_gen_toks: int = 256, prefix_token_id: int | None = None,
                 batch_size: Any = 1, max_batch_size: Any = None,
                 trust_remote_code: bool | None = None, name: str | None = None):
        super().__init__()
        given = [k for k, v in (("checkpoint", checkpoint), ("model", model), ("net", net))
                 if v is not None]
        if len(given) != 1:
            raise ValueError("memarch: give exactly one of checkpoint=<path> (model_args), "
                             f"model=<EvalModel> or net=<module>; got {given or 'none'}")
        if model is None:
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                log.warning("memarch: device=%s but CUDA is not available; using cpu", device)
                device = "cpu"
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if isinstance(dtype, str) and dtype.lower() in ("auto", "none", ""):
                dtype = None
            chunk = _opt_int(chunk_size, "chunk_size") or 2048
            if checkpoint is not None:
                model = EvalModel.from_checkpoint(str(checkpoint), tokenizer=tokenizer,
                                                  device=str(device), dtype=dtype,
                                                  chunk_size=chunk)
            else:
                model = EvalModel(net, tokenizer or "byte", device=str(device), dtype=dtype,
                                  chunk_size=chunk, name=name or "model")
        elif not isinstance(model, EvalModel):
            raise ValueError(f"memarch: model= must be a memarch EvalModel, got "
                             f"{type(model).__name__} (pass a network as net=)")
        self.model = model
        self._device = model.device
        self.max_length = _opt_int(max_length, "max_length")
        self.max_gen_toks = _opt_int(max_gen_toks, "max_gen_toks") or 256
        self._prefix_id = _opt_int(prefix_token_id, "prefix_token_id", minimum=0)
        self.batch_size = batch_size
        self._cache_key: tuple[int, ...] | None = None
        self._cache_state: Any = None

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None
                            ) -> MemarchLM:
        """``model_args`` win over lm-eval's run-level settings (``--device``, whose CLI
        default is cuda:0, ``--batch_size``): ``device=cpu`` in ``model_args`` is not an
        error."""
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None
                               ) -> MemarchLM:
        """``"checkpoint=PATH,chunk_size=4096,..."`` (see ``create_from_arg_obj``)."""
        from lm_eval.utils import simple_parse_args_string
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # -- tokens ------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.model.tokenizer_name or type(self.model.tokenizer).__name__)

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context (and a rolling document) is conditioned on."""
        pid = self._prefix_id if self._prefix_id is not None else self.model.eos_id
        if pid is None:
            raise ValueError(
                "memarch: this request needs a start token (an empty context, or a rolling "
                "log-likelihood), but the model cannot take the tokenizer's end-of-text id "
                f"(vocab_size {self.model.vocab_size}); pass prefix_token_id=<id>")
        return pid

    def tok_encode(self, text: str) -> list[int]:
        return self.model.encode(text)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as lm-eval's HF model (``TemplateLM``) splits them."""
        if context == "":
            return [self.prefix_token_id], self.tok_encode(continuation)
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # -- scoring -----------------------------------------------------------------------
    def _state_after(self, prefix: tuple[int, ...]) -> Any:
        """The model state after ``prefix`` (None when empty); the last one is kept."""
        if not prefix:
            return None
        if prefix != self._cache_key:
            self._cache_key, self._cache_state = None, None      # free the old one first
            self._cache_state = self.model.prefill(list(prefix))[1]
            self._cache_key = prefix
        return self._cache_state

    def _score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        if not cont:
            return 0.0, True
        ids = ctx + cont
        if self.max_length is not None and len(ids) > self.max_length + 1:
            if len(cont) > self.max_length:
                raise ValueError(f"memarch: a continuation of {len(cont)} tokens does not fit "
                                 f"max_length={self.max_length}")
            ids = ids[-(self.max_length + 1):]
        n_ctx = len(ids) - len(cont)                          # >= 1
        state = self._state_after(tuple(ids[:n_ctx - 1]))
        lp, greedy = self.model.token_logprobs(ids[n_ctx - 1:], state, start=1)
        return float(lp.double().sum()), bool(greedy.all())

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        # group continuations of one context so its state is computed once
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for i in progress(order, desc="memarch loglikelihood", total=len(order),
                          enabled=False if disable_tqdm else None):
            out[i] = self._score(*pairs[i])
            self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
        self._cache_key, self._cache_state = None, None
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in progress(requests, desc="memarch loglikelihood_rolling",
                            total=len(requests), enabled=False if disable_tqdm else None):
            (text,) = req.args
            ids = [self.prefix_token_id] + self.tok_encode(text)
            ll = 0.0
            if len(ids) > 1:
                lp, _ = self.model.token_logprobs(ids, start=1)
                ll = float(lp.double().sum())
            out.append(ll)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), ll)
        return out

    # -- generation --------------------------------------------------------------------
    def _gen_settings(self, gen_kwargs: dict | None) -> tuple[list[str], int]:
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_gen = _opt_int(kw.pop("max_gen_toks", self.max_gen_toks), "max_gen_toks")
        do_sample, temperature = kw.pop("do_sample", False), kw.pop("temperature", 0.0)
        if do_sample or (temperature or 0.0) > 0:
            raise ValueError(f"memarch: generate_until decodes greedily; the task asks for "
                             f"sampling (do_sample={do_sample}, temperature={temperature})")
        if kw:
            log.warning("memarch: greedy decoding ignores generation kwargs %s", sorted(kw))
        return [s for s in until if isinstance(s, str) and s], max_gen or self.max_gen_toks

    def _generate(self, context: str, stops: Sequence[str], max_gen: int) -> str:
        ids = self.tok_encode(context) or [self.prefix_token_id]
        if self.max_length is not None:
            room = self.max_length - max_gen
            if room < 1:
                raise ValueError(f"memarch: max_gen_toks={max_gen} leaves no room for the "
                                 f"prompt in max_length={self.max_length}")
            ids = ids[-room:]
        toks = self.model.generate(ids, max_gen, stop_tokens=[self.model.eos_id],
                                   stop_strings=stops)
        text = self.model.decode(toks)
        for s in stops:
            text = text.split(s)[0]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in progress(requests, desc="memarch generate_until", total=len(requests),
                            enabled=False if disable_tqdm else None):
            context, gen_kwargs = req.args
            stops, max_gen = self._gen_settings(gen_kwargs)
            text = self._generate(context, stops, max_gen)
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out


class TaskDataError(RuntimeError):
    """A task's dataset could not be loaded (offline and not cached, or not found)."""


def task_data_message(task: Any, error: BaseException) -> str:
    """What to do when ``task``'s data cannot be loaded."""
    cfg = getattr(task, "config", None)
    name = getattr(cfg, "task", None) or type(task).__name__
    path = getattr(task, "DATASET_PATH", None) or getattr(cfg, "dataset_path", None)
    subset = getattr(task, "DATASET_NAME", None) or getattr(cfg, "dataset_name", None)
    data = f"{path}" + (f" ({subset})" if subset else "")
    load = f"datasets.load_dataset({path!r}" + (f", {subset!r}" if subset else "") + ")"
    return (f"task {name!r}: cannot load its data {data}: {type(error).__name__}: {error}\n"
            "The task's data must be in the Hugging Face datasets cache (offline runs, "
            "HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1, read only the cache: run it once online, "
            f"or {load}, to cache it), or be passed as local files: a task YAML with "
            "`dataset_path: json` and `dataset_kwargs: {data_files: {test: /path/file.jsonl}}`, "
            "its folder given with --include_path")


def _guard_task_downloads() -> None:
    """Make lm-eval's dataset loading (``Task.download``) raise :class:`TaskDataError` with
    :func:`task_data_message` instead of a long traceback (for ``main`` only)."""
    from lm_eval.api import task as lm_task
    for cls in (lm_task.Task, lm_task.ConfigurableTask):
        orig = cls.__dict__.get("download")
        if orig is None or getattr(orig, "_memarch_guard", False):
            continue

        def download(self, *args, _orig=orig, **kwargs):
            try:
                return _orig(self, *args, **kwargs)
            except OSError as e:        # ConnectionError offline, FileNotFoundError, ...
                raise TaskDataError(task_data_message(self, e)) from e

        download._memarch_guard = True
        cls.download = download


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with ``memarch`` registered (``argv``: its arguments). A task
    whose data cannot be loaded (offline, not cached) ends in one message, not a traceback."""
    from lm_eval.__main__ import cli_evaluate
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _guard_task_downloads()
    try:
        cli_evaluate()
    except TaskDataError as e:
        raise SystemExit(f"memarch-lm-eval: {e}") from None


if __name__ == "__main__":
    # one module object: a later `import memarch.eval.lm_eval_adapter` must not register a
    # second MemarchLM class under the same name
    sys.modules.setdefault("memarch.eval.lm_eval_adapter", sys.modules[__name__])
    main()
