"""Train a memarch model: ``python train.py experiment=hybrid_tiny [key=value ...]``."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from memarch.lit.module import NonFiniteLossError
    from memarch.lit.train import run
    try:
        run(cfg)
    except NonFiniteLossError as e:
        raise SystemExit(f"training stopped: {e}") from None


if __name__ == "__main__":
    main()
