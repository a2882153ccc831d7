"""One entry point: `python run.py [group=option ...] [key=value ...]`.

Composes the Hydra config (conf/), validates it, and hands over to src.app. No training logic.
"""

import sys

import hydra
from omegaconf import DictConfig

from src.config import register_configs
from src.utils.resolvers import register_resolvers

register_resolvers()
register_configs()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    from src.app import main as app_main

    return app_main(cfg)


if __name__ == "__main__":
    main()
    from src.app import FAILED_JOBS

    if FAILED_JOBS:  # a multirun went on past failed jobs: say so in the exit code
        print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed:", file=sys.stderr)
        for line in FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)
