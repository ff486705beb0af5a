"""Shared fixtures. ``checks`` counts comparisons and fails a test that made none, so a
parametrisation whose assertions never fire cannot pass silently."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from memarch import state as st  # noqa: E402

# The tests run tiny tensors: one intra-op thread avoids OpenMP spin-wait overhead (and
# the 10x slowdowns it causes when the 2 cores are shared).
torch.set_num_threads(1)


class Checks:
    def __init__(self):
        self.n = 0

    def close(self, actual, expected, *, atol, rtol=0.0, msg=""):
        """assert_close on tensors or on two states (tree of tensors), counted."""
        a, e = st.tensors(actual), st.tensors(expected)
        assert len(a) == len(e), f"{msg}: {len(a)} vs {len(e)} tensors"
        assert a, f"{msg}: nothing to compare"
        for i, (x, y) in enumerate(zip(a, e)):
            assert x.shape == y.shape, f"{msg}[{i}]: shape {tuple(x.shape)} vs {tuple(y.shape)}"
            if x.is_floating_point():
                torch.testing.assert_close(x, y, atol=atol, rtol=rtol,
                                           msg=lambda m: f"{msg}[{i}]: {m}")
            else:
                assert torch.equal(x, y), f"{msg}[{i}]: {x} vs {y}"
            self.n += 1

    def true(self, cond, msg=""):
        assert cond, msg
        self.n += 1

    def equal(self, a, b, msg=""):
        assert torch.equal(a, b), f"{msg}: {a} vs {b}"
        self.n += 1


@pytest.fixture
def checks():
    c = Checks()
    yield c
    assert c.n > 0, "test made no checked comparison"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- the real pretrained model (``make real-model``), shared by the ``real`` tests ----------
@pytest.fixture(scope="session")
def real_model_file():
    """The GGUF of SmolLM2-135M-Instruct, or skip (naming ``make real-model``)."""
    from memarch.pretrained import RealModelMissing, real_model_path
    try:
        return real_model_path()
    except RealModelMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def real_model(real_model_file):
    """``from_gguf`` of the real model, fp32, eval mode (do not modify it in a test)."""
    from memarch.models import from_gguf
    return from_gguf(real_model_file)


@pytest.fixture(scope="session")
def real_checkpoint(real_model_file, tmp_path_factory):
    """The real model converted by ``python -m memarch.convert gguf`` (in-process)."""
    from memarch.convert import main
    out = tmp_path_factory.mktemp("real") / "smollm2.ckpt"
    assert main(["gguf", str(real_model_file), str(out)]) == 0
    return out
