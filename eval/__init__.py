"""memarch.eval: the evaluation harness (LongBench-format tasks, synthetic suites,
perplexity by position). Installed from the repo's ``eval/`` folder as ``memarch.eval``;
its contents arrive with the evaluation issue (#6)."""
