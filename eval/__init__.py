"""memarch.eval: the evaluation harness (installed from the repo's ``eval/`` folder).

- ``memarch.eval.model.EvalModel``: a network + tokenizer, evaluated chunk by chunk with its
  state (``EvalModel.from_checkpoint(path)``).
- ``memarch.eval.run.evaluate(model, tasks, out_dir, settings=..., longbench=...)``: run
  task names and print a summary; ``python -m memarch.eval`` is its Hydra entry
  (``eval/configs/``, installed as ``memarch/eval/configs/``).
- ``memarch.eval.longbench``: LongBench v1 / LongBench-E with the official scoring.
- ``memarch.eval.synthetic``: passkey, needle heatmap, MQAR, RULER-style suites.
- ``memarch.eval.perplexity``: perplexity by position over a long local text.
- ``memarch.eval.lm_eval_adapter``: the lm-evaluation-harness model ``memarch``.
"""
