"""Every figure `make bench` measures against a target from the issues, gathered as the sections run,
then printed as one table and written to bench/results.json (for the README and for comparing runs)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    section: str
    name: str
    measured: float
    unit: str
    target: str  # as the issue states it, e.g. "<= 2"
    met: bool | None  # None: no target, shown for context

    def shown(self) -> str:
        value = f"{self.measured:,.0f}" if abs(self.measured) >= 100 else f"{self.measured:.2f}".rstrip("0").rstrip(".")
        return f"{value} {self.unit}".strip()


FIGURES: list[Figure] = []


def add(section: str, name: str, measured: float, unit: str, *, at_most: float | None = None,
        at_least: float | None = None) -> Figure:
    """Record a figure; its target is `at_most` or `at_least` (in the figure's unit), if it has one."""
    if at_most is not None:
        target, met = f"<= {at_most:g} {unit}".strip(), measured <= at_most
    elif at_least is not None:
        target, met = f">= {at_least:g} {unit}".strip(), measured >= at_least
    else:
        target, met = "", None
    figure = Figure(section, name, float(measured), unit, target, met)
    FIGURES.append(figure)
    return figure


def table() -> str:
    """One Markdown table, every figure beside its target."""
    lines = ["| section | figure | measured | target | met |", "| --- | --- | --- | --- | --- |"]
    for figure in FIGURES:
        met = "" if figure.met is None else ("yes" if figure.met else "**no**")
        lines.append(f"| {figure.section} | {figure.name} | {figure.shown()} | {figure.target} | {met} |")
    return "\n".join(lines)


def write(sections, seconds: float) -> Path:
    path = ROOT / "bench" / "results.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({
        "taken_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "sections": list(sections),
        "seconds": round(seconds),
        "figures": [asdict(figure) for figure in FIGURES],
    }, indent=2) + "\n")
    return path
