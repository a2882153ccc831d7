"""OmegaConf resolvers used by conf/ (registered by run.py before Hydra composes).

``${run_id:}``: the run dir's name. A timestamp, except under torchrun, where every rank must
land in the same run dir: there it is derived from TORCHELASTIC_RUN_ID, which torchrun sets
identically on all ranks (``torchrun --standalone`` makes it a fresh uuid; otherwise pass
``--rdzv-id``).

``${rank_zero_only:VALUE}``: VALUE on global rank 0 (or without torchrun), null elsewhere, so
only rank 0 writes Hydra's ``.hydra/`` folder into the shared run dir.
"""

from __future__ import annotations

import os
from datetime import datetime

from omegaconf import OmegaConf

_STAMP = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def run_id() -> str:
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid and rid != "none":
        return f"{_STAMP[:10]}_torchrun-{rid[:12]}"
    if rid == "none":  # torchrun without --standalone/--rdzv-id: fall back to the master port
        return f"{_STAMP[:10]}_torchrun-port{os.environ.get('MASTER_PORT', '0')}"
    return _STAMP


def rank_zero_only(value):
    return value if int(os.environ.get("RANK", "0")) == 0 else None


def register_resolvers() -> None:
    for name, fn in (("run_id", run_id), ("rank_zero_only", rank_zero_only)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
