"""`edgecls data stats`: images per class and split (by file name, no decoding) and a histogram PNG."""

from __future__ import annotations

import os
from pathlib import Path

from edgecls.atomic import atomic_savefig
from edgecls.data.checks import copies_beside, copies_warning
from edgecls.data.layout import class_folders, walk_paths
from edgecls.data.tools import detect_layout
from edgecls.errors import UserError


def dataset_stats(root: str | os.PathLike) -> dict:
    """{"root", "layout", "splits", "classes", "counts": {split: {class: n}}, "totals", "imbalance", "warnings"}."""
    layout = detect_layout(root)
    classes = sorted({c for folder in layout.splits.values() for c in class_folders(folder)})
    counts = {
        split: {c: (len(walk_paths(folder / c, images_only=True)) if (folder / c).is_dir() else 0) for c in classes}
        for split, folder in layout.splits.items()
    }
    totals = {split: sum(row.values()) for split, row in counts.items()}
    first = next(iter(counts))
    nonzero = [n for n in counts[first].values() if n]
    return {
        "root": str(layout.root),
        "layout": layout.kind,
        "splits": list(counts),
        "classes": classes,
        "counts": counts,
        "totals": totals,
        "total": sum(totals.values()),
        "imbalance": round(max(nonzero) / min(nonzero), 3) if nonzero else None,
        "warnings": _copies(layout),
    }


def _copies(layout) -> list[str]:
    """The class folders beside train/ (a second copy of the data, e.g. a copy-mode split's originals)."""
    if layout.kind != "splits":
        return []
    message = copies_warning(layout.root, copies_beside(layout.root, class_folders(layout.root / "train")))
    return [message] if message else []


def refuse_existing(outputs: dict[str, Path | None], force: bool = False) -> None:
    """Stop before any work when an output file (setting name -> path; None: not written) exists, unless force."""
    for name, path in outputs.items():
        if path is not None and not force and os.path.lexists(path):
            raise UserError(
                f"`{name}` {path}: already exists (it may be one of your images); "
                f"pass `force` to replace it or give another `{name}`"
            )


def plot_histogram(stats: dict, png_path: str | os.PathLike) -> Path:
    """Grouped bars (one group per class, one bar per split), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes, splits = stats["classes"], stats["splits"]
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) + 2), 4.5))
    try:
        for i, split in enumerate(splits):
            ax.bar(
                x + (i - (len(splits) - 1) / 2) * width,
                [stats["counts"][split][c] for c in classes],
                width,
                label=f"{split} ({stats['totals'][split]})",
            )
        ax.set_xticks(x)
        ax.set_xticklabels(
            classes, rotation=45 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center"
        )
        ax.set_ylabel("images")
        top = max([max(row.values(), default=0) for row in stats["counts"].values()] + [1])
        ax.set_ylim(0, top * 1.25)  # room for the legend above the bars
        ax.set_title(f"Images per class: {Path(stats['root']).name}")
        ax.legend(loc="upper right", ncol=len(splits))
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    atomic_savefig(fig, png_path)
    return Path(png_path)


def format_stats(stats: dict) -> str:
    splits = stats["splits"]
    width = max([5] + [len(c) for c in stats["classes"]])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in splits)]
    for cls in stats["classes"]:
        lines.append(f"{cls:<{width}}  " + "  ".join(f"{stats['counts'][s][cls]:>7}" for s in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{stats['totals'][s]:>7}" for s in splits))
    if stats["imbalance"] is not None:
        lines.append(
            f"{len(stats['classes'])} classes, {stats['total']} images; "
            f"largest/smallest class in {splits[0]}: {stats['imbalance']:g}"
        )
    lines += [f"warning: {message}" for message in stats.get("warnings", [])]
    return "\n".join(lines)
