"""MkDocs hook (``hooks:`` in mkdocs.yml): the docs' result tables and plots, made from the
data files under ``docs/results/data/`` at build time, so a page cannot drift from its data.

* ``<!-- table: NAME -->`` on a page becomes ``docs/results/data/NAME.csv`` as a markdown
  table, followed by the command, package versions, machine and date of its rows
  (``lame.evaluation.tables``: the file format).
* ``<!-- plot: NAME -->`` becomes a PNG drawn with matplotlib from the data file(s) in
  ``PLOTS[NAME]``, generated into the site as ``results/img/NAME.png``.

The build fails (a ``PluginError``) on a marker that names no data file and on a data file no
page renders.
"""

from __future__ import annotations

import io
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

from lame.evaluation.tables import number, read_table, render_markdown

DATA = "results/data"
IMG = "results/img"
MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- (?P<kind>table|plot): (?P<name>[\w.-]+) -->[ \t]*$", re.M)


def _bars(ax, labels, values, errors, title, xlabel):
    y = range(len(labels))
    ax.barh(list(y), values, xerr=errors, capsize=3, color="#4c72b0", ecolor="#333333")
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def quality_plot(data: Path, name: str):
    """hit@1 and tier-2 hit@1 per run, mean with ± sd error bars over the seeds."""
    import matplotlib.pyplot as plt

    _, rows = read_table(data / f"{name}.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.6), sharey=True)
    labels = [r["run"] for r in rows]
    for ax, column in zip(axes, ["hit@1", "tier 2"]):
        means, sds = zip(*(number(r[column]) for r in rows))
        _bars(ax, labels, means, sds, f"{column} (mean ± sd, {rows[0]['seeds']} seeds)", "percent")
    axes[0].invert_yaxis()  # shared y: once for both, first row on top
    return fig


def throughput_plot(data: Path, name: str):
    """Embeddings/s per precision, one group of bars per workload."""
    import matplotlib.pyplot as plt

    columns, rows = read_table(data / f"{name}.csv")
    workloads = columns[1:]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        values = [number(row[w])[0] for w in workloads]
        ax.bar([k + i * width for k in range(len(workloads))], values, width, label=row[columns[0]])
    ax.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(workloads))], workloads)
    ax.set_ylabel("embeddings / s")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def methods_plot(data: Path, name: str):
    """lame-bench: embeddings/s per method at batch 1 and 16 (log scale)."""
    import matplotlib.pyplot as plt

    _, rows = read_table(data / f"{name}.csv")
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for i, column in enumerate(["batch 1 emb/s", "batch 16 emb/s"]):
        values = [number(r[column])[0] for r in rows]
        ax.barh([k + i * 0.4 for k in range(len(rows))], values, 0.4, label=column)
    ax.set_yticks([k + 0.2 for k in range(len(rows))], [r["method"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("embeddings / s (log scale)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def search_plot(data: Path, name: str):
    """Search: queries/s against recall@10 per method, one panel per (N, dim)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    _, rows = read_table(data / f"{name}.csv")
    shapes = list(dict.fromkeys((r["N"], r["dim"]) for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.2 * len(shapes), 3.2), sharey=True)
    for ax, (n, dim) in zip(axes, shapes):
        for r in rows:
            if (r["N"], r["dim"]) == (n, dim):
                qps, recall = number(r["queries/s"])[0], number(r["recall@10"])[0]
                ax.scatter(qps, recall, s=14)
                ax.annotate(r["method"], (qps, recall), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # no overlapping minor labels
        ax.set_title(f"N {n}, dim {dim}", fontsize=9)
        ax.set_xlabel("queries / s (log)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@10")
    return fig


# plot name -> (drawing function, the data file it reads, alt text)
PLOTS = {
    "quality_rendered": (quality_plot, "quality_rendered", "hit@1 and tier 2 per run, rendered digits"),
    "quality_handwriting": (quality_plot, "quality_handwriting", "hit@1 and tier 2 per run, handwriting"),
    "runtime_throughput": (throughput_plot, "runtime_throughput", "runtime embeddings/s per precision"),
    "bench_methods": (methods_plot, "bench_methods", "lame-bench embeddings/s per method"),
    "search": (search_plot, "search", "search queries/s against recall@10"),
}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _data_dir(config) -> Path:
    return Path(config["docs_dir"]) / DATA


def _markers(config) -> list[tuple[str, str, str]]:
    found = []
    for page in sorted(Path(config["docs_dir"]).rglob("*.md")):
        for m in MARKER.finditer(page.read_text(encoding="utf-8")):
            found.append((str(page), m["kind"], m["name"]))
    return found


def on_files(files, config):
    import matplotlib

    matplotlib.use("Agg")
    data = _data_dir(config)
    available = {p.stem for p in data.glob("*.csv")}
    used = set()
    for page, kind, name in _markers(config):
        if kind == "table":
            if name not in available:
                raise PluginError(f"{page}: <!-- table: {name} --> but no {DATA}/{name}.csv")
            used.add(name)
        else:
            if name not in PLOTS:
                raise PluginError(f"{page}: <!-- plot: {name} --> is not one of {sorted(PLOTS)}")
            used.add(PLOTS[name][1])
    unused = sorted(available - used)
    if unused:
        raise PluginError(f"data files no page renders: {', '.join(f'{DATA}/{n}.csv' for n in unused)}")
    for name, (draw, source, _) in PLOTS.items():
        content = _png(draw(data, source))
        files.append(File.generated(config, f"{IMG}/{name}.png", content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    data = _data_dir(config)
    here = posixpath.dirname(page.file.src_uri)

    def replace(m: re.Match) -> str:
        indent, name = m["indent"], m["name"]
        if m["kind"] == "table":
            columns, rows = read_table(data / f"{name}.csv")
            return render_markdown(columns, rows, indent).rstrip("\n")
        _, source, alt = PLOTS[name]
        link = posixpath.relpath(f"{IMG}/{name}.png", here or ".")
        csv_link = posixpath.relpath(f"{DATA}/{source}.csv", here or ".")
        return f"{indent}![{alt}]({link})\n\n{indent}*Drawn at build time from [{source}.csv]({csv_link}).*"

    return MARKER.sub(replace, markdown)
