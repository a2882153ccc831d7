"""Read back what an offline W&B run recorded (its ``.wandb`` file) for tests: the file is a
LevelDB-style log (7-byte ``:W&B`` header, 32 KiB blocks, records with a 7-byte header:
crc32, length, type FULL/FIRST/MIDDLE/LAST) of ``wandb_internal_pb2.Record`` protobufs."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        space = BLOCK - pos % BLOCK
        if space < 7:  # block trailer: padding
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def run_summary(path: str | Path) -> dict[str, Any]:
    """config (last value of each key), summary, metric definitions, job type and tags."""
    out: dict[str, Any] = {"config": {}, "summary": {}, "metrics": {}, "job_type": None, "tags": []}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "config":
            for u in r.config.update:
                out["config"][u.key] = json.loads(u.value_json)
        elif kind == "summary":
            for u in r.summary.update:
                out["summary"][u.key] = json.loads(u.value_json)
        elif kind == "metric":
            out["metrics"][r.metric.name] = r.metric
        elif kind == "run":
            out["job_type"], out["tags"] = r.run.job_type, list(r.run.tags)
            for u in r.run.config.update:
                out["config"][u.key] = json.loads(u.value_json)
    return out
