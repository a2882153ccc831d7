"""Compare runs without W&B: ``python -m src.compare <run or sweep dirs...>``.

Reads what every run dir holds (``.hydra/overrides.yaml``, ``summary.json``,
``metrics.jsonl``; ``optimization_results.yaml`` in an Optuna sweep dir) and prints one table:
what differed between the runs (only the overrides that vary across the set), status, steps,
wall time, best and final value of the monitored metric and of each ``--metric``, sorted by the
monitored metric with the best run marked. ``--plot KEY [KEY ...]`` writes a PNG of those curves
(one line per run, labelled by what differed), ``--csv FILE`` the table. Runs that failed or never
finished are listed as such, not skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.utils.errors import UserError

MARKERS = ("summary.json", "metrics.jsonl", ".hydra")


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.summary:
            return "unfinished" if self.records else "not started"
        return str(self.summary.get("status", "?"))

    @property
    def monitor(self) -> str | None:
        return self.summary.get("monitor")

    @property
    def mode(self) -> str:
        return self.summary.get("monitor_mode") or (
            "min" if "loss" in (self.monitor or "") else "max"
        )

    def series(self, key: str) -> list[tuple[int, float]]:
        out = []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.append((int(r.get("step", len(out))), float(v)))
        return out

    def best(self, key: str, mode: str) -> float | None:
        values = [v for _, v in self.series(key)]
        if not values:
            v = self.summary.get(key)
            return float(v) if isinstance(v, (int, float)) else None
        return max(values) if mode == "max" else min(values)

    def final(self, key: str) -> float | None:
        s = self.series(key)
        return s[-1][1] if s else None


def _read_overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-line
            continue
    return records


def load_run(run_dir: Path) -> Run:
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return Run(run_dir, _read_overrides(run_dir), summary, _read_records(run_dir))


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run dir at or below the given paths (a run, a multirun/sweep dir, a tree)."""
    found: dict[Path, Run] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such run or sweep dir")
        candidates = (
            [p]
            if any((p / m).exists() for m in MARKERS)
            else sorted(
                d
                for d in p.rglob("*")
                if d.is_dir() and any((d / m).exists() for m in MARKERS) and d.name != ".hydra"
            )
        )
        for d in candidates:
            found.setdefault(d.resolve(), load_run(d))
    if not found:
        raise UserError(
            f"no runs under {', '.join(map(str, paths))} (a run dir holds summary.json, "
            "metrics.jsonl or .hydra/)"
        )
    return list(found.values())


def varying(runs: list[Run]) -> list[str]:
    """Override keys whose value is not the same in every run."""
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def label(run: Run, keys: list[str]) -> str:
    return ", ".join(f"{k}={run.overrides.get(k, '-')}" for k in keys) or run.path.name


def table(runs: list[Run], metrics: list[str]) -> tuple[list[str], list[list[Any]], Run | None]:
    """Header, rows (sorted by the monitored metric, best first) and the best run."""
    keys = varying(runs)
    monitor = next((r.monitor for r in runs if r.monitor), None)
    mode = next((r.mode for r in runs if r.monitor), "max")
    columns = [m for m in ([monitor] if monitor else []) + metrics if m]
    columns = list(dict.fromkeys(columns))
    scored = [(r, r.best(monitor, mode) if monitor else None) for r in runs]
    sign = -1 if mode == "max" else 1
    scored.sort(
        key=lambda rv: (rv[1] is None, sign * rv[1] if rv[1] is not None else 0, str(rv[0].path))
    )
    best = scored[0][0] if scored and scored[0][1] is not None else None
    header = ["", "run", *keys, "status", "steps", "seconds"]
    for c in columns:
        header += [f"best {c}", f"final {c}"]
    rows = []
    for run, _ in scored:
        steps = run.summary.get("global_step", run.records[-1].get("step") if run.records else None)
        row = [
            "*" if run is best else "",
            run.path.name,
            *[run.overrides.get(k, "-") for k in keys],
            run.status,
            steps,
            run.summary.get("seconds"),
        ]
        for c in columns:
            row += [run.best(c, mode if c == monitor else _mode_of(c)), run.final(c)]
        rows.append(row)
    return header, rows, best


def _mode_of(metric: str) -> str:
    return "min" if "loss" in metric else "max"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def plot(runs: list[Run], keys: list[str], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = varying(runs)
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 3.2 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for run in runs:
            s = run.series(key)
            if s:
                ax.plot([x for x, _ in s], [y for _, y in s], marker=".", label=label(run, names))
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def optuna_results(paths: list[str | Path]) -> list[tuple[Path, dict]]:
    out = []
    for p in map(Path, paths):
        f = p / "optimization_results.yaml"
        if f.is_file():
            out.append((p, yaml.safe_load(f.read_text()) or {}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dirs", nargs="+", help="run dirs, multirun/sweep dirs or trees of them")
    parser.add_argument("--metric", nargs="*", default=[], help="more metrics for the table")
    parser.add_argument("--plot", nargs="*", default=None, help="metrics to plot (PNG)")
    parser.add_argument("--out", default="compare.png", help="the PNG's path (--plot)")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.dirs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header, rows, best = table(runs, args.metric)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{len(runs)} runs" + (f", monitored {best.monitor}" if best else ""))
    for h in header:
        t.add_column(h)
    for row in rows:
        t.add_row(*map(_fmt, row), style="bold green" if row[0] == "*" else None)
    console = Console(width=max(120, 14 * len(header)))
    console.print(t)
    for sweep, res in optuna_results(args.dirs):
        console.print(
            f"Optuna ({sweep}): best value {_fmt(res.get('best_value'))} with "
            + ", ".join(f"{k}={v}" for k, v in (res.get("best_params") or {}).items())
        )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    if args.plot:
        path = plot(runs, args.plot, Path(args.out))
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
