"""Train a memarch model: ``python train.py experiment=hybrid_tiny [key=value ...]``.

A bad config value, a bad data file, a refused resume or a stopped run (non-finite loss,
loss blow-up) ends with a one-paragraph message naming the key, file or checkpoint, and
exit status 1 (no traceback).
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from memarch.data.text import DataError
    from memarch.lit.module import TrainingStopped
    from memarch.lit.train import ConfigError, run
    try:
        run(cfg)
    except TrainingStopped as e:
        raise SystemExit(f"training stopped: {e}") from None
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except (DataError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
