"""Turn benchmark rows into the table, the target verdicts, JSON and a PNG plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from speed_infra import jsonable
from speed_ways import MiB, Row


def _find(rows: list[Row], way: str, dataset: str, state: str) -> Row | None:
    for row in rows:
        if row.way.startswith(way) and row.dataset == dataset and row.state == state and row.error is None:
            return row
    return None


#: The bounds the benchmark checks (ratios within one run; "higher" says which way is better).
BOUNDS = {
    "cold cat vs raw GETs": 0.9,
    "zarr via mount vs ReferenceFS (cold)": 1.2,
    "warm re-read vs local disk": 0.9,
    "random cold p99 / raw GET p99": 1.5,
    "random warm p99 (ms)": 1.0,
    "16 readers cold vs raw GETs": 0.9,
    "ls -lR D4 warm / local": 3.0,
    "daemon CPU s/GiB, cold sequential cat (worst set)": 1.0,
    "daemon peak RSS over the cache budget (MiB)": 200.0,
}


def targets(rows: list[Row], cache_size: int) -> list[dict[str, Any]]:
    """Each target as (name, measured value, bound, met); ``met`` is None when a way it needs did not run."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, bound: float, higher_is_better: bool, detail: str) -> None:
        met = None if value is None else (value >= bound if higher_is_better else value <= bound)
        out.append({"target": name, "value": value, "bound": bound, "met": met, "detail": detail})

    for d in ("D1", "D2", "D3"):
        cat, lim = _find(rows, "refmount: cat", d, "cold"), _find(rows, "limit: raw", d, "cold")
        add(f"cold cat {d} vs raw GETs", cat and lim and cat.mb_s / lim.mb_s, BOUNDS["cold cat vs raw GETs"], True,
            f"{cat.mb_s:.0f} vs {lim.mb_s:.0f} MB/s" if cat and lim else "missing")
        z, rfs = _find(rows, "refmount: zarr", d, "cold"), _find(rows, "in-process: zarr", d, "cold")
        add(f"zarr via mount {d} vs ReferenceFS (cold)", z and rfs and rfs.wall_s / z.wall_s,
            BOUNDS["zarr via mount vs ReferenceFS (cold)"], True,
            f"{z.wall_s:.2f} vs {rfs.wall_s:.2f} s" if z and rfs else "missing")
        warm, local = _find(rows, "refmount: cat", d, "warm"), _find(rows, "limit: local", d, "warm")
        add(f"warm re-read {d} vs local disk", warm and local and warm.mb_s / local.mb_s,
            BOUNDS["warm re-read vs local disk"], True,
            f"{warm.mb_s:.0f} vs {local.mb_s:.0f} MB/s" if warm and local else "missing")
    rc, rw, raw = (_find(rows, "refmount: 500 random", "all", "cold"), _find(rows, "refmount: 500 random", "all", "warm"),
                   _find(rows, "limit: 500 single", "all", "cold"))
    add("random cold p99 / raw GET p99", rc and raw and rc.extra["p99_ms"] / raw.extra["p99_ms"],
        BOUNDS["random cold p99 / raw GET p99"], False,
        f"{rc.extra['p99_ms']:.2f} vs {raw.extra['p99_ms']:.2f} ms" if rc and raw else "missing")
    add("random warm p99 (ms)", rw and rw.extra["p99_ms"], BOUNDS["random warm p99 (ms)"], False,
        "" if rw else "missing")
    conc, lim = _find(rows, "refmount: 16 readers", "all", "cold"), _find(rows, "limit: raw", "all", "cold")
    add("16 readers cold vs raw GETs", conc and lim and conc.mb_s / lim.mb_s, BOUNDS["16 readers cold vs raw GETs"],
        True, f"{conc.mb_s:.0f} vs {lim.mb_s:.0f} MB/s, every byte verified" if conc and lim else "missing")
    ls, lsl = _find(rows, "refmount: ls -lR", "D4", "warm"), _find(rows, "local dir: ls -lR", "D4", "warm")
    add("ls -lR D4 warm / local", ls and lsl and ls.wall_s / lsl.wall_s, BOUNDS["ls -lR D4 warm / local"], False,
        f"{ls.wall_s:.2f} vs {lsl.wall_s:.2f} s" if ls and lsl else "missing")
    cpu = {d: row.extra["cpu_s_per_gib"] for d in ("D1", "D2", "D3")
           if (row := _find(rows, "refmount: cat", d, "cold")) and "cpu_s_per_gib" in row.extra}
    worst = max(cpu, key=cpu.__getitem__) if cpu else None
    add("daemon CPU s/GiB, cold sequential cat (worst set)", cpu[worst] if worst else None,
        BOUNDS["daemon CPU s/GiB, cold sequential cat (worst set)"], False,
        ", ".join(f"{d} {v:.2f}" for d, v in cpu.items()) if cpu else "missing")
    measured = [r.rss for r in rows if r.way.startswith("refmount") and r.error is None and r.rss]
    add("daemon peak RSS over the cache budget (MiB)", (max(measured) - cache_size) / MiB if measured else None,
        BOUNDS["daemon peak RSS over the cache budget (MiB)"], False,
        f"peak {max(measured) / MiB:.0f} MiB, budget {cache_size // MiB} MiB" if measured else "missing")
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def table(rows: list[Row], verdicts: list[dict[str, Any]]) -> str:
    lines = ["| way | set | state | wall s | MB/s | GETs | fetched/delivered | peak RSS MiB | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.way} | {r.dataset} | {r.state} | - | - | - | - | - | FAILED: {r.error.replace('|', '/')} |")
            continue
        ratio = r.fetched / r.delivered if r.fetched is not None and r.delivered else None
        notes = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.extra.items())
        lines.append(f"| {r.way} | {r.dataset} | {r.state} | {_fmt(r.wall_s, '.3f')} | {_fmt(r.mb_s, '.0f')} | "
                     f"{'-' if r.gets is None else r.gets} | {_fmt(ratio, '.2f')} | "
                     f"{_fmt(r.rss / MiB if r.rss else None, '.0f')} | {notes} |")
    lines += ["", "| target | measured | bound | met | detail |", "|---|---:|---:|---|---|"]
    for v in verdicts:
        met = {True: "yes", False: "**no**", None: "n/a"}[v["met"]]
        lines.append(f"| {v['target']} | {_fmt(v['value'], '.2f')} | {v['bound']:g} | {met} | {v['detail']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = ["D1", "D2", "D3"]
    ways = [w for w in dict.fromkeys(r.way for r in rows if r.dataset in sets and r.error is None)]
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.42 * len(ways) + 2), sharey=True)
    for ax, state in zip(axes, ("cold", "warm"), strict=False):
        height = 0.8 / len(sets)
        for i, d in enumerate(sets):
            values = []
            for w in ways:
                row = next((r for r in rows if r.way == w and r.dataset == d and r.state == state and r.error is None), None)
                values.append(row.mb_s if row else 0)
            ax.barh([y + i * height for y in range(len(ways))], values, height=height, label=d)
        ax.set_title(f"{state} (MB/s of stored bytes, higher is better)")
        ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks([y + 0.4 - 0.4 / len(sets) for y in range(len(ways))], ways)
    axes[0].invert_yaxis()
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_json(rows: list[Row], verdicts: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    payload = {"meta": meta, "rows": [dict(asdict(r), mb_s=r.mb_s) for r in rows], "targets": verdicts}
    path.write_text(json.dumps(jsonable(payload), indent=1))
