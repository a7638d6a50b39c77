"""Training curves as a PNG (people read plots faster than logs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

LOSSES = ("total", "contrastive", "reconstruction", "diversity")


def plot_training(metrics: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    train_rows = [m for m in metrics if "total" in m]
    for name in LOSSES:
        points = [(m["step"], m[name]) for m in train_rows if name in m]
        if points:
            ax_loss.plot(*zip(*points), label=name)
    boundaries = [a["step"] for a, b in zip(train_rows, train_rows[1:]) if a["stage"] != b["stage"]]
    for step in boundaries:
        for ax in (ax_loss, ax_eval):
            ax.axvline(step, color="grey", linestyle=":", label="_stage")
    ax_loss.set(title="training losses", xlabel="step", yscale="log")
    ax_loss.legend()
    evals = [m for m in metrics if "eval" in m]
    if evals:
        groups = sorted({g for m in evals for g in m["eval"].get("per_group", {})})
        steps = [m["step"] for m in evals]
        ax_eval.plot(steps, [m["eval"]["hit@1"] for m in evals], "o-", label="overall")
        for group in groups:
            ax_eval.plot(steps, [m["eval"]["per_group"].get(group, {}).get("hit@1")
                                 for m in evals], "o--", label=group)
        ax_eval.legend()
    ax_eval.set(title="eval hit@1 (%)", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
