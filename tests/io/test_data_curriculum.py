"""MQAR's curriculum over the number of pairs: training sequence i holds the curriculum's
pairs while i < until, then num_kv_pairs; the held-out split never follows it; bad values
are refused naming the key; without it the items are unchanged."""

from __future__ import annotations

import pytest
import torch

from memarch.data import MQAR


def _pairs(item) -> int:
    return int((item["labels"] != -100).sum())


def test_curriculum_stages_by_sequence_index():
    ds = MQAR(seq_len=64, num_kv_pairs=16, curriculum=[[10, 4], [20, 8]])
    assert [_pairs(ds[i]) for i in (0, 9, 10, 19, 20, 1000)] == [4, 4, 8, 8, 16, 16]
    item = ds[3]                                   # 4 pairs at 0..7, keys and values
    ids, labels = item["input_ids"], item["labels"]
    assert ids.shape == (64,) and (ids[8:][labels[8:] != -100] <= 32).all()
    q = (labels != -100).nonzero().flatten()
    assert set(ids[q].tolist()) == set(ids[0:8:2].tolist())        # every key queried once
    assert (q >= 8).all()


def test_curriculum_is_training_only_and_default_unchanged():
    val = MQAR(seq_len=64, num_kv_pairs=16, curriculum=[[10, 4]], split="val", seed=1)
    assert _pairs(val[0]) == 16
    a, b = MQAR(seq_len=64, num_kv_pairs=8), MQAR(seq_len=64, num_kv_pairs=8, curriculum=[[5, 8]])
    for i in (0, 7):
        assert torch.equal(a[i]["input_ids"], b[i]["input_ids"])


@pytest.mark.parametrize("bad", [[[10, 4], [5, 8]], [[10, 0]], [[10, 17]], [[10, True]],
                                 [10, 4], "x", [[10.5, 4]]])
def test_curriculum_refused(bad):
    with pytest.raises(ValueError, match="data.dataset.curriculum"):
        MQAR(seq_len=64, num_kv_pairs=16, curriculum=bad)
