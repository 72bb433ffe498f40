"""Pictures for the UI: loss curves drawn with matplotlib into PNG files. No dagster import here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def loss_curve(
    series: Mapping[str, Sequence[tuple[float, float]]], path: Path, title: str, x_label: str = "step"
) -> Path:
    """Draw each named series of (x, loss) points into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    axes.set_xlabel(x_label)
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
    return path
