"""Training curves and benchmark bars as PNGs (people read plots faster than logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOSSES = ("total", "contrastive", "reconstruction", "diversity", "lm")


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
            ax_eval.plot(
                steps, [m["eval"]["per_group"].get(group, {}).get("hit@1") for m in evals], "o--", label=group
            )
        ax_eval.legend()
    ax_eval.set(title="eval hit@1 (%)", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bench(report: dict[str, Any], path: Path) -> None:
    """Embeddings/s per method and batch size (log scale), and the deployment rows."""
    import os
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    batches = [k for k in methods if k.startswith("batch")]
    names = list(methods[batches[0]])
    deploy = report.get("deployment")
    fig, axes = plt.subplots(1, 2 if deploy else 1, figsize=(12 if deploy else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(batches)
    for i, batch in enumerate(batches):
        values = [methods[batch][n]["emb_per_s"] for n in names]
        bars = ax.bar([j + i * width for j in range(len(names))], values, width, label=batch)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks([j + width * (len(batches) - 1) / 2 for j in range(len(names))], names)
    env = report["environment"]
    ax.set(
        yscale="log",
        ylabel="embeddings / s",
        title=f"{report['preset']} on {env.get('gpu', str(env['cpus']) + ' CPUs')} ({env['dtype']})",
    )
    ax.legend()
    if deploy:
        ax = axes[0][1]
        ms = deploy["ms_per_batch"]
        backends = list(next(iter(ms.values())))
        for i, batch in enumerate(ms):
            bars = ax.bar(
                [j + i * width for j in range(len(backends))],
                [ms[batch][b] for b in backends],
                width,
                label=batch,
            )
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks([j + width * (len(ms) - 1) / 2 for j in range(len(backends))], backends)
        ax.set(ylabel="ms per batch (lower is better)", title="LaME: PyTorch eager vs ONNX Runtime")
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
