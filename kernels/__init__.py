"""memarch.kernels: sequence ops with one signature per op and several implementations.

Each op lives in ``kernels/<op>/`` (installed as ``memarch.kernels.<op>``): ``naive.py`` (the
executable spec, fp32 loops), ``torch_chunk.py`` (chunked PyTorch, the CPU path) and
``triton_*.py`` (GPU). This package imports nothing from the rest of ``memarch``; the ops
arrive with the kernels issue (#4).
"""
