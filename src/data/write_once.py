"""Writing a synthetic dataset once, safely under concurrent runs: the two policies every
synthetic generator uses.

* ``write_once(root, marker, params, write)``: the whole dataset is written into a temporary
  sibling folder (``write(tmp)``), the marker json (the parameters) last, and the folder renamed
  into place, so a concurrent process never sees half a dataset and a crash leaves nothing. A
  ``root`` that exists without the marker, or was written with other parameters, is refused
  (``DataError``): the dataset yaml puts the options in the folder name, so other options mean
  another folder.
* ``write_parts_once(root, marker, params, owned, write)``: for roots shared with a user's
  own files layout (WIDER FACE, COCO / VOC / YOLO): the ``owned`` parts are built in a temporary
  sibling, moved into ``root`` one by one, the marker written last; other parameters regenerate
  the parts, and a ``root`` holding anything else than those parts is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from src.data.base import DataError

log = logging.getLogger(__name__)


def write_once(root: Path, marker: str, params: dict, write: Callable[[Path], None]) -> Path:
    root = Path(root).expanduser()
    name = marker.removesuffix(".json")
    if not (root / marker).is_file():
        if root.exists() and any(root.iterdir()):
            raise DataError(
                f"{name}: {root} exists but has no {marker} (not a finished synthetic dataset); "
                "delete that folder or point dataset.root elsewhere"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            write(tmp)
            (tmp / marker).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
            if root.exists():  # an empty folder (e.g. made by hand): replace it
                try:
                    root.rmdir()
                except OSError:
                    pass
            try:
                os.rename(tmp, root)
            except OSError:
                if not (root / marker).is_file():  # not another process winning the race
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    found = json.loads((root / marker).read_text(encoding="utf-8"))
    if found != params:
        raise DataError(
            f"{name}: {root} was generated with {found}, but {params} was asked for; delete "
            "that folder or point dataset.root elsewhere"
        )
    return root


def write_parts_once(
    root: Path, marker: str, params: dict, owned: tuple[str, ...], write: Callable[[Path], None]
) -> Path:
    root = Path(root)
    marker_path = root / marker
    name = marker.removesuffix(".json")

    def done() -> bool:
        try:
            return json.loads(marker_path.read_text()) == params
        except (OSError, ValueError):
            return False

    if done():
        return root
    if root.exists():
        foreign = [p.name for p in root.iterdir() if p.name not in (*owned, marker)]
        if foreign:
            raise DataError(
                f"{root}: not a {name} directory (contains "
                f"{', '.join(sorted(foreign)[:3])}); choose an empty or new root"
            )
    log.info("writing %s to %s (%s)", name, root, params)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if done():  # another process finished first
            return root
        root.mkdir(parents=True, exist_ok=True)
        marker_path.unlink(missing_ok=True)
        for part in owned:
            target = root / part
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(tmp / part, target)
        tmp_marker = root / f".{marker}.tmp-{os.getpid()}"
        tmp_marker.write_text(json.dumps(params))
        os.replace(tmp_marker, marker_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
