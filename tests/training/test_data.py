"""Datasets: synthetic task layouts, determinism, packing, segments."""

from __future__ import annotations

import torch

from memarch.data import IGNORE_INDEX, MQAR, ByteTokenizer, Passkey, StreamSegments, TextFiles


def test_mqar_layout_and_determinism(checks):
    ds = MQAR(seq_len=64, num_kv_pairs=8, num_keys=32, num_values=32, seed=3)
    for i in range(20):
        it = ds[i]
        ids, lab = it["input_ids"], it["labels"]
        keys, vals = ids[0:16:2], ids[1:16:2]
        pairs = dict(zip(keys.tolist(), vals.tolist()))
        checks.true(len(pairs) == 8 and all(1 <= k <= 32 for k in pairs), "8 distinct keys")
        checks.true(all(33 <= v <= 64 for v in pairs.values()), "values after the keys")
        q = (lab != IGNORE_INDEX).nonzero().flatten()
        checks.true(len(q) == 8 and bool((q >= 16).all()) and bool((q % 2 == 0).all()),
                    "every key queried once, at even offsets of the query region")
        checks.true(all(pairs[int(ids[p])] == int(lab[p]) for p in q), "label = the key's value")
        rest = torch.ones(64, dtype=torch.bool)
        rest[:16], rest[q] = False, False
        checks.true(bool((ids[rest] == 0).all()), "filler elsewhere")
    checks.equal(ds[5]["input_ids"], MQAR(seed=3)[5]["input_ids"], "deterministic per seed")
    checks.true(not torch.equal(ds[5]["input_ids"], MQAR(seed=4)[5]["input_ids"]), "seeds differ")


def test_passkey_labels_are_the_digits(checks):
    ds = Passkey(seq_len=200, seed=0)
    for i in range(5):
        it = ds[i]
        text = bytes(it["input_ids"].tolist()).decode()
        key = text.split("The pass key is ")[1][:5]
        lab = it["labels"][it["labels"] != IGNORE_INDEX]
        checks.true(bytes(lab.tolist()).decode() == key and len(it["input_ids"]) == 200,
                    f"answer digits {key}")
        checks.true(text.endswith("The pass key is " + key[:4]), "the question ends the input")


def test_text_packing_and_segments(tmp_path, checks):
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 50)
    tr = TextFiles(paths=[f], seq_len=16, split="train", val_fraction=0.2)
    va = TextFiles(paths=[f], seq_len=16, split="val", val_fraction=0.2)
    tok = ByteTokenizer().encode("abcdefghij" * 50) + [256]
    n = (len(tok) - 1) // 16
    checks.true(tr.n + va.n == n and va.n == int(n * 0.2), "train/val split of the chunks")
    it = va[0]
    c = tr.n
    checks.equal(it["input_ids"], torch.tensor(tok[c * 16:c * 16 + 16]), "val chunk inputs")
    checks.equal(it["labels"], torch.tensor(tok[c * 16 + 1:c * 16 + 17]), "shifted labels")
    seen = {tr._chunk(i) for i in range(tr.n)}
    checks.true(seen == set(range(tr.n)), "an epoch visits every training chunk once")
    seg = StreamSegments(MQAR(seq_len=64, seed=0), global_batch=3, segment_len=16)
    base = MQAR(seq_len=64, seed=0)
    for s in range(6):
        for b in range(3):
            it = seg[s * 3 + b]
            doc, k = (s // 4) * 3 + b, s % 4
            checks.equal(it["input_ids"], base[doc]["input_ids"][16 * k:16 * k + 16],
                         f"step {s} row {b}")


def test_text_files_check_settings_and_documents(tmp_path, checks):
    """Probe: TextFiles with seq_len <= 0 or val_fraction outside (0, 1), a non-UTF-8 .txt
    (file + byte offset), JSONL text fields that are null / numbers (file + line); valid
    multi-byte UTF-8 in .txt and .jsonl still reads exactly."""
    import pytest

    from memarch.data.text import DataError, iter_jsonl, read_documents
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 50)
    for kw, pat in [(dict(seq_len=0), r"data\.dataset\.seq_len must be an int >= 1"),
                    (dict(seq_len=-3), r"data\.dataset\.seq_len must be an int >= 1"),
                    (dict(seq_len=16, val_fraction=1.0), r"val_fraction must lie in \(0, 1\)"),
                    (dict(seq_len=16, val_fraction=0.0), r"val_fraction must lie in \(0, 1\)"),
                    (dict(seq_len=10 ** 6), r"fewer than 2 chunks of data\.dataset\.seq_len")]:
        with pytest.raises(DataError, match=pat):
            TextFiles(paths=[f], **kw)
        checks.n += 1
    good = tmp_path / "u.jsonl"
    good.write_bytes('{"text": "naïve café"}\r\n\n{"text": "日本"}\n'.encode())
    checks.true([n for n, _ in iter_jsonl(good)] == [1, 3], "line numbers skip blank lines")
    checks.true(read_documents([good]) == ["naïve café", "日本"], "UTF-8 JSONL text")
    (tmp_path / "u.txt").write_text("ünïcode ✓")
    checks.true(read_documents([tmp_path / "u.txt"]) == ["ünïcode ✓"], "UTF-8 text")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ok ✓\n".encode() + b"\x80 rest")
    with pytest.raises(DataError, match=r"bad\.txt: byte offset 7: not UTF-8 text \(byte 0x80"):
        read_documents([bad])
    for value, kind in [("null", "null"), ("42", r"a number \(42\)"), ("1.5", r"a number"),
                        ("true", r"a boolean"), ('["a"]', "a list")]:
        j = tmp_path / "v.jsonl"
        j.write_text(f'{{"text": "x"}}\n{{"text": {value}}}\n')
        with pytest.raises(DataError, match=rf"v\.jsonl: line 2: field 'text' is {kind}"):
            read_documents([j])
        checks.n += 1


def test_text_files_read_with_universal_newlines(tmp_path):
    """Windows (CRLF) and old-Mac (CR) line ends read as "\\n", as ``Path.read_text`` did:
    the bytes read for error offsets must not change the training text."""
    from memarch.data.text import read_documents
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\rc\n")
    (tmp_path / "lf.txt").write_bytes(b"a\nb\nc\n")
    assert read_documents([tmp_path / "crlf.txt"]) == read_documents([tmp_path / "lf.txt"])
