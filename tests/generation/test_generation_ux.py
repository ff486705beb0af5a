"""Generation usability: list prompts are accepted by ``generate``,
``stream`` and ``prefill``; the result objects print a short summary, not every tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_helpers import hybrid_lm
from torch.utils import _pytree as pytree

from memarch.generation import DecodeStep, GenerationOutput, generate, prefill, stream
from memarch.mixers.base import MixerOutput
from memarch.models.lm import LMOutput
from memarch.state import summary


class Recorder(torch.nn.Module):
    """No parameters: records the ids it is given; logits favour token (last id + 1) % V."""

    def __init__(self, V=7):
        super().__init__()
        self.V, self.seen = V, []

    def forward(self, ids, state=None):
        self.seen.append(ids)
        logits = torch.nn.functional.one_hot((ids + 1) % self.V, self.V).float()
        return logits, (0 if state is None else state) + ids.shape[1], None


def test_list_prompts_match_tensor_prompts(checks):
    m = hybrid_lm().eval()
    one = [3, 14, 15, 9, 26]
    batch = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7]]
    for prompt in (one, batch, tuple(one), [np.int64(v) for v in one]):
        t = torch.tensor(prompt, dtype=torch.long)
        t = t[None] if t.dim() == 1 else t
        ref = generate(m, t, 6)
        out = generate(m, prompt, 6)
        checks.true(out.tokens.shape == (t.shape[0], 6), "list -> [B, T] (1-D -> B = 1)")
        checks.true(torch.equal(out.tokens, ref.tokens), "same tokens as the tensor prompt")
        checks.true(torch.equal(out.finished, ref.finished), "same finished")
        got = [s.token for s in stream(m, prompt, max_new_tokens=6)]
        checks.true(torch.equal(torch.stack(got, 1), ref.tokens), "stream takes lists too")
        lp, sp = prefill(m, prompt)
        lt, st_ = prefill(m, t)
        checks.close(lp, lt, atol=0, msg="prefill takes lists too")
        checks.true(torch.equal(sp[0].pos, st_[0].pos), "same positions after prefill")


def test_list_prompt_is_int64_on_the_model_device(checks):
    r = Recorder()                                   # no parameters: cpu
    prefill(r, [1, 2, 3])
    ids = r.seen[-1]
    checks.true(ids.dtype == torch.int64 and ids.device.type == "cpu" and ids.shape == (1, 3),
                "int64 [1, T] on cpu for a model without parameters")
    out = generate(Recorder(), [[1, 2], [4, 5]], 3)
    checks.true(out.tokens.tolist() == [[3, 4, 5], [6, 0, 1]], "batched list prompt decodes")
    m = hybrid_lm().eval().to(torch.device("meta"))  # the model's device comes from its params
    from memarch.generation import _as_ids
    checks.true(_as_ids("generate", m, [1, 2]).device.type == "meta", "model's device")
    tensor = torch.zeros(1, 2, dtype=torch.int32)
    checks.true(_as_ids("generate", m, tensor) is tensor, "tensors pass unchanged")


def test_bad_list_prompts_name_ids():
    m = hybrid_lm().eval()
    with pytest.raises(ValueError, match=r"generate|stream"):
        generate(m, [[1, 2, 3], [4, 5]], 2)
    with pytest.raises(ValueError, match=r"ids .*rows of equal length.*row lengths \[3, 2\]"):
        stream(m, [[1, 2, 3], [4, 5]])
    with pytest.raises(ValueError, match=r"prefill: ids .*equal length"):
        prefill(m, [[1], [2, 3]])
    with pytest.raises(TypeError, match=r"ids given as a list must hold int token ids, got 2.5 "
                                        r"\(float\) at ids\[1\]"):
        generate(m, [1, 2.5, 3], 2)
    with pytest.raises(TypeError, match=r"ids .*int token ids, got '7' \(str\) at ids\[1\]\[0\]"):
        prefill(m, [[1], ["7"]])
    with pytest.raises(TypeError, match=r"ids .*got True \(bool\)"):
        stream(m, [True, 2])
    with pytest.raises(TypeError, match=r"ids must be a list of ints .* or a list of lists .*"
                                        r"not a mix"):
        generate(m, [[1, 2], 3], 2)
    with pytest.raises(ValueError, match=r"ids must be \[B, T\] with T >= 1, got an empty list"):
        generate(m, [], 2)
    with pytest.raises(ValueError, match=r"ids must be \[B, T\] with T >= 1, got 2 empty rows"):
        generate(m, [[], []], 2)
    with pytest.raises(ValueError, match=r"ids must be int64 token ids, got 2{70}|ids must be "
                                         r"int64 token ids"):
        generate(m, [2 ** 70], 2)


def test_result_reprs_are_short_and_show_shapes(checks):
    m = hybrid_lm().eval()                           # 4 layers
    out = generate(m, [[1, 2, 3], [4, 5, 6]], 20, stop_tokens=[60])
    text = repr(out)
    checks.true(len(text) < 300, f"short repr ({len(text)} chars): {text}")
    checks.true(text.startswith("GenerationOutput(tokens=[2, 20] int64, state=<tuple of 4 "
                                "layer states: 15 tensors, "), text)
    checks.true("pos=[22, 22]" in text, "positions shown")
    checks.true(text.endswith(f"finished=[2] bool: {out.finished.tolist()})"), text)
    checks.true(str(out) == text, "str is the short repr too")

    lm = m(torch.tensor([[1, 2, 3]]))
    t = repr(lm)
    checks.true(t.startswith("LMOutput(logits=[1, 3, 61] float32, state=<tuple of 4 layer")
                and t.endswith("pos=[3]>, aux_loss=None)") and len(t) < 300, t)
    mo = m.blocks[2].mixer(torch.randn(2, 3, 32), None)
    t = repr(mo)
    checks.true(t.startswith("MixerOutput(y=[2, 3, 32] float32, state=<KVCacheState: 3 tensors,")
                and "pos=[3, 3]" in t and t.endswith("aux_loss=None)"), t)
    step = next(iter(stream(m, [5, 6], max_new_tokens=1)))
    t = repr(step)
    checks.true(t.startswith("DecodeStep(token=[1] int64: [") and "pos=[2]" in t, t)
    # values only for tiny tensors; 0-d tensors; big batches summarise the positions
    checks.true(summary(torch.zeros(3, 3)) == "[3, 3] float32", summary(torch.zeros(3, 3)))
    checks.true(summary(torch.tensor(0.25)) == "scalar float32: 0.25", "0-d")
    checks.true(summary(torch.arange(4)) == "[4] int64: [0, 1, 2, 3]", "tiny values")
    big = m(torch.zeros(20, 2, dtype=torch.long)).state
    checks.true("pos=2 (20 rows)" in summary(big), summary(big))
    checks.true(summary(7) == "7" and summary(None) == "None", "other values: their repr")


def test_result_tuples_behave_as_before(checks):
    m = hybrid_lm().eval()
    out = generate(m, [1, 2, 3], 4)
    tokens, state, finished = out                    # unpacking
    checks.true(out[0] is tokens and out[-1] is finished and len(out) == 3, "indexing")
    checks.true(out._fields == ("tokens", "state", "finished"), "fields")
    new = out._replace(finished=~finished)
    checks.true(type(new) is GenerationOutput and new.tokens is tokens, "_replace")
    leaves, spec = pytree.tree_flatten(out)
    back = pytree.tree_unflatten(leaves, spec)
    checks.true(type(back) is GenerationOutput and torch.equal(back.tokens, tokens), "pytree")
    checks.true(isinstance(out, tuple) and tuple(out) == (tokens, state, finished), "tuple")
    for cls, args in [(DecodeStep, (tokens[:, 0], state)),
                      (LMOutput, (torch.zeros(1, 1, 2), (), None)),
                      (MixerOutput, (torch.zeros(1, 1, 2), None))]:
        obj = cls(*args)
        checks.true(len(obj) == len(cls._fields) and obj[0] is args[0], f"{cls.__name__} tuple")
