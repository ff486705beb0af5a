"""LongBench-format tasks (v1 and LongBench-E): task facts, prompts, truncation, scoring."""
