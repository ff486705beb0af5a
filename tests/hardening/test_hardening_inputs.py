"""Hardening, the bad inputs whose errors did not say what to do: Attention's arguments
through the strict parser, meta-device and wrong-dtype inputs and states, int8 ids, a
directory given as training data, ``python -m memarch.eval`` without a checkpoint, a full
disk while saving, and converted checkpoints that carry a digest. Each test fails on the
code before the fix."""

from __future__ import annotations

import pytest
import torch
from lm_helpers import hybrid_lm

from memarch.checkpoint import CheckpointError, atomic_write, read
from memarch.mixers import Attention


@pytest.mark.parametrize("kw,name", [
    (dict(rope_base="1e4"), "rope_base"), (dict(rope_base=float("inf")), "rope_base"),
    (dict(rope_base=True), "rope_base"), (dict(learned_sink="no"), "learned_sink"),
    (dict(learned_sink=1), "learned_sink"), (dict(n_persistent=True), "n_persistent"),
    (dict(n_persistent=1.0), "n_persistent"), (dict(block_size=2.0), "block_size"),
    (dict(window=64, sink_positions=1), "sink_positions"), (dict(window=True), "window"),
    (dict(window=8, n_sinks="2"), "n_sinks"), (dict(bias="false"), "bias"),
    (dict(qkv_bias="no"), "qkv_bias"), (dict(o_bias=0), "o_bias"),
    (dict(n_heads=2, head_dim=10 ** 9), "head_dim"),
])
def test_attention_arguments_go_through_the_strict_parser(kw, name):
    """Probe: ``Attention(rope_base='1e4')`` was a TypeError from a comparison, a huge
    ``head_dim`` an allocation failure; every argument now gets one ValueError naming it."""
    with pytest.raises(ValueError, match=rf"Attention: .*{name}"):
        Attention(32, **kw)


def test_attention_meta_and_dtype_inputs_are_named():
    a = Attention(32, n_heads=2, window=8, n_sinks=1)
    with pytest.raises(ValueError, match="x is on the meta device"):
        a(torch.zeros(1, 3, 32, device="meta"))
    with pytest.raises(TypeError, match=r"x has dtype torch.float16 .* parameters have dtype "
                                        r"torch.float32"):
        a(torch.zeros(1, 3, 32, dtype=torch.float16))
    with pytest.raises(ValueError, match="state field 'sink_k' is on the meta device"):
        a(torch.zeros(1, 3, 32), a.init_state(1, device="meta"))
    y = a(torch.randn(1, 3, 32)).y                       # the valid call still runs
    assert torch.isfinite(y).all()


def test_ids_int8_and_meta():
    """Probe: int8 ids were refused as "must be an integer tensor"; meta ids reached
    ``Tensor.item()``."""
    torch.manual_seed(0)
    m = hybrid_lm().eval()
    ids = torch.tensor([[1, 2, 3, 60]])
    with torch.no_grad():
        ref = m(ids).logits
        for dt in (torch.int8, torch.uint8, torch.int16, torch.int32):
            assert torch.equal(m(ids.to(dt)).logits, ref), dt
    with pytest.raises(ValueError, match="ids are on the meta device"):
        m(ids.to("meta"))
    with pytest.raises(ValueError, match=r"integer tensor \[B, T\].*got dtype torch.bool"):
        m(ids.bool())


def test_a_directory_given_as_data_is_named_as_one(tmp_path):
    from memarch.data.text import DataError, read_documents
    with pytest.raises(DataError, match=rf"{tmp_path} is a directory; list the data files"):
        read_documents([tmp_path])


@pytest.mark.slow
def test_eval_without_a_checkpoint_says_so(tmp_path):
    """Probe: ``python -m memarch.eval`` with no checkpoint said ``file not found: ???``."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "memarch.eval", f"out_dir={tmp_path / 'o'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode != 0
    assert "no checkpoint given: pass checkpoint=PATH" in r.stderr, r.stderr
    assert "???" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_a_full_disk_is_named_and_the_old_file_kept(tmp_path):
    """Probe: disk full while saving gave ``[enforce fail at inline_container.cc:672]
    unexpected pos`` with nothing saying what happened."""
    path = tmp_path / "last.ckpt"
    torch.save({"a": torch.ones(2)}, path)
    before = path.read_bytes()

    def full(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    with pytest.raises(OSError, match=r"cannot save checkpoint .*last.ckpt: the write failed "
                                      r".* MiB free on its disk .*the previous file is kept"):
        atomic_write(path, full, what="checkpoint")
    assert path.read_bytes() == before
    assert not (tmp_path / "last.ckpt.tmp").exists()
    with pytest.raises(OSError, match=r"cannot save checkpoint .*new.ckpt: .*nothing was "
                                      r"written"):
        atomic_write(tmp_path / "new.ckpt", full, what="checkpoint")
    with pytest.raises(ZeroDivisionError):            # not a write failure: as is
        atomic_write(path, lambda tmp: 1 / 0)
    assert path.read_bytes() == before


def test_a_full_disk_during_training_saves(tmp_path, monkeypatch):
    from memarch.lit.io import AtomicCheckpointIO

    def full(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="cannot save checkpoint .*x.ckpt: the write failed"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "x.ckpt")


def test_converted_checkpoints_carry_a_digest(tmp_path):
    """Probe (item 8, the converter's output): a converted checkpoint with flipped bytes
    loaded; it now records a digest that ``read`` checks."""
    from memarch.convert import save
    out = save({"state_dict": {"net.embed.weight": torch.arange(64.0)}}, tmp_path / "c.ckpt")
    assert torch.equal(read(out)["state_dict"]["net.embed.weight"], torch.arange(64.0))
    data = bytearray(out.read_bytes())
    needle = torch.arange(64.0).numpy().tobytes()[40:48]
    i = bytes(data).index(needle)
    data[i] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="net.embed.weight"):
        read(out)
