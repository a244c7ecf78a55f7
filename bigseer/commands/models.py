"""``bigseer models``: table of the RegNetY presets (built on the meta device: nothing allocated)."""

from __future__ import annotations

import argparse

from bigseer.models import PRESETS, TIMM_NAMES, build_regnet, count_params


def preset_rows() -> list[dict[str, object]]:
    """One dict per preset: name, stage widths/depths/group widths, trunk params, timm name (or "-")."""
    rows = []
    for name in PRESETS:
        model = build_regnet(name, device="meta")
        rows.append({
            "name": name,
            "widths": "/".join(map(str, model.stage_widths)),
            "depths": ",".join(map(str, model.stage_depths)),
            "group_widths": "/".join(map(str, model.stage_group_widths)),
            "params": count_params(model),
            "timm": TIMM_NAMES.get(name, "-"),
        })
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    """Fixed-width text table of :func:`preset_rows`."""
    header = ("preset", "stage widths", "depths", "group widths", "trunk params", "timm name")
    cells = [header] + [(str(r["name"]), str(r["widths"]), str(r["depths"]), str(r["group_widths"]),
                         f"{r['params']:,}", str(r["timm"])) for r in rows]
    sizes = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = {4}  # right-align the parameter counts
    lines = ["  ".join(c.rjust(s) if i in right else c.ljust(s) for i, (c, s) in enumerate(zip(row, sizes))).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * s for s in sizes))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bigseer models`` takes no flags."""


def run(args: argparse.Namespace) -> int:
    """Print the preset table."""
    print(format_table(preset_rows()))
    return 0
