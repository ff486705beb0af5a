"""``python -m memarch.eval checkpoint=PATH [preset=synthetic|longbench|longbench_e|smoke|
perplexity] [tasks=[...]] [settings.<suite>.<key>=...] [longbench.<key>=...]``.

Hydra entry over ``configs/eval/eval.yaml``; results go to ``out_dir`` (see memarch.eval.run).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../configs/eval", config_name="eval")
def main(cfg: DictConfig) -> None:
    from memarch.eval.model import EvalModel
    from memarch.eval.run import evaluate, validate_tasks
    c = OmegaConf.to_container(cfg, resolve=True)
    known = {"checkpoint", "tokenizer", "device", "dtype", "chunk_size", "tasks", "settings",
             "longbench", "out_dir"}
    unknown = sorted(set(c) - known)
    try:
        if unknown:
            raise ValueError(f"eval config: unknown key(s) {unknown}; expected {sorted(known)}")
        validate_tasks(c["tasks"])
        model = EvalModel.from_checkpoint(c["checkpoint"], tokenizer=c["tokenizer"],
                                          device=c["device"], dtype=c["dtype"],
                                          chunk_size=c["chunk_size"])
        evaluate(model, c["tasks"], c["out_dir"], settings=c["settings"],
                 longbench=c["longbench"])
    # ValueError includes memarch.checkpoint.CheckpointError (corrupt, truncated or unsafe
    # file) and memarch.config.TargetNotAllowedError; OSError an unreadable file
    except (ValueError, OSError) as e:
        raise SystemExit(f"memarch.eval: {e}") from None


if __name__ == "__main__":
    main()
