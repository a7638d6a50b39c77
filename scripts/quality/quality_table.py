"""Markdown tables from scripts/quality/quality_runs.sh's runs: mean ± sd over seeds of overall /
tier / per-task hit@1, and each row's difference to a baseline row.

    python scripts/quality/quality_table.py runs/quality [runs/quality-reasoning ...]
                                    [--rows lame,discriminative,...] [--baseline discriminative]

Rows of a further root (e.g. ``quality_parallel.py --variant reasoning=...``: the same rows
on another dataset) are labelled with that root's suffix. Each row's difference is taken to
the baseline of its own start: ``gen-*`` rows to ``gen-BASELINE`` (same pre-trained backbone),
the others to ``BASELINE``, within the first root. When a run directory holds ``probe.json``
(``scripts/probes/probe_latents.py --out``), a probe table follows.

A row is ``ROOT/NAME/seed*/eval.json`` (one per seed) or, for single-seed runs of earlier
releases, ``ROOT/NAME/eval.json``. Differences smaller than twice their standard error are
flagged "not significant". The lm pre-training runs (``ROOT/lm/seed*/generate.json``) get
their own table: exact match of the generated answers.

``--data-out DIR`` also writes each table as a data file the docs site renders
(``DIR/PREFIX.csv``, ``PREFIX_diff.csv``, ``PREFIX_tasks.csv``, ``PREFIX_generation.csv``,
``PREFIX_probes.csv``, ``PREFIX_val.csv``, ``PREFIX_dims.csv``; ``lame.evaluation.tables``),
every row carrying ``--command`` (the command that made the runs), the installed package
versions, the machine and today's date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lame.evaluation.stats import compare, summarise
from lame.evaluation.tables import parse_markdown_tables, provenance, write_table

LABELS = {
    "lame": "LaME (K=8, mask, decoder, diversity, two stages)",
    "discriminative": "discriminative (K=0, VLM2Vec style)",
    "cot": "explicit CoT (UME-R1 style, generates then embeds)",
    "latent": "latent multi-step (K=8 steps, Coconut style)",
    "k2": "LaME K=2",
    "k4": "LaME K=4",
    "k16": "LaME K=16",
    "no-mask": "LaME without bottleneck mask",
    "no-decoder": "LaME without decoder head",
    "no-diversity": "LaME without diversity term",
    "one-stage": "LaME, joint stage only",
    "gen-lame": "LaME, generative init",
    "gen-discriminative": "discriminative, generative init",
    "gen-cot": "explicit CoT, generative init",
    "gen-latent": "latent, generative init",
    "gen-no-mask": "LaME without mask, generative init",
    "gen-no-decoder": "LaME without decoder head, generative init",
    "gen-k2": "LaME K=2, generative init",
    "matryoshka": "LaME with Matryoshka loss (32, 64, 128)",
    "gen-matryoshka": "LaME with Matryoshka loss, generative init",
    "gen-w-rec2": "LaME, reconstruction weight 2, generative init",
    "gen-k4": "LaME K=4, generative init",
    "gen-warmup40": "LaME, 40 % warm-up, generative init",
    "gen-lame-long": "LaME, generative init, 1,000 steps",
    "gen-discriminative-long": "discriminative, generative init, 1,000 steps",
    "gen-lame-rows": "LaME, small decoder head, generative init",
    "gen-lame-smollm2": "LaME, SmolLM2-135M latent decoder, generative init",
    "lame-smollm2": "LaME, SmolLM2-135M latent decoder",
    "wall-discriminative": "discriminative, LaME's wall time",
    "wall-cot": "explicit CoT, LaME's wall time",
    "wall-latent": "latent, LaME's wall time",
}
# The lm pre-training runs (ROOT/lm/seed*/generate.json): exact match of generated answers.
GENERATION_COLUMNS = {
    "exact match": lambda r: r.get("exact_match"),
    "i2t exact": lambda r: r["per_direction"].get("i2t", {}).get("exact_match"),
    "t2i exact": lambda r: r["per_direction"].get("t2i", {}).get("exact_match"),
    "digits read": lambda r: r.get("digits_read"),
}
COLUMNS = {
    "hit@1": lambda r: r["hit@1"],
    "tier 1": lambda r: r["per_group"]["tier1"]["hit@1"],
    "tier 2": lambda r: r["per_group"]["tier2"]["hit@1"],
    "ndcg@10": lambda r: r["ndcg@10"],
}


def load(root: Path, names: list[str], suffix: str = "", file: str = "eval.json") -> dict[str, list[dict]]:
    """Row name (+ suffix) -> the ``file`` of each seed found."""
    runs = {}
    for name in names:
        files = sorted((root / name).glob(f"seed*/{file}")) or [
            p for p in [root / name / file] if p.is_file()
        ]
        if files:
            runs[name + suffix] = [json.loads(p.read_text()) for p in files]
    return runs


def label(key: str) -> str:
    name, _, variant = key.partition("@")
    return LABELS.get(name, name) + (f" [{variant}]" if variant else "")


def baseline_of(key: str, baseline: str) -> str:
    if key.endswith("-long"):  # the longer runs compare with the baseline run as long
        return f"gen-{baseline}-long"
    return f"gen-{baseline}" if key.startswith("gen-") else baseline


def tables(runs: dict[str, list[dict]], baseline: str) -> str:
    lines = ["| run | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, results in runs.items():
        cells = [str(summarise([get(r) for r in results])) for get in COLUMNS.values()]
        lines.append(f"| {label(name)} | {len(results)} | " + " | ".join(cells) + " |")
    compared = [n for n in runs if baseline_of(n, baseline) in runs and n != baseline_of(n, baseline)]
    if compared:
        lines += [
            "",
            f"Difference to `{baseline}` started the same way (`gen-{baseline}` for "
            "generative-init rows; mean ± standard error; not significant when "
            "smaller than 2 standard errors):",
            "",
            "| run | vs | " + " | ".join(COLUMNS) + " |",
            "|---|---|" + "---|" * len(COLUMNS),
        ]
        for name in compared:
            base = baseline_of(name, baseline)
            cells = [
                str(compare(summarise([get(r) for r in runs[name]]), summarise([get(r) for r in runs[base]])))
                for get in COLUMNS.values()
            ]
            lines.append(f"| {label(name)} | `{base}` | " + " | ".join(cells) + " |")
    names = list(runs)
    lines += [
        "",
        "| task (hit@1, mean over seeds) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for task in next(iter(runs.values()))[0]["per_task"]:
        lines.append(
            f"| {task} | "
            + " | ".join(
                f"{summarise([r['per_task'][task]['hit@1'] for r in runs[n]]).mean:.1f}" for n in names
            )
            + " |"
        )
    return "\n".join(lines)


def validation_table(vals: dict[str, list[dict]]) -> str:
    """Rows' val.json (the validation split carved from training samples): what variants are
    chosen on; eval is only measured."""
    lines = [
        "Validation split (`val.jsonl`: images composed from training samples, not trained "
        "on; variants are chosen here, never on eval):",
        "",
        "| run | seeds | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, results in vals.items():
        cells = [str(summarise([get(r) for r in results])) for get in COLUMNS.values()]
        lines.append(f"| {label(name)} | {len(results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dimension_table(runs: dict[str, list[dict]]) -> str | None:
    """hit@1 and tier 2 at each embedding size of eval.json's by_dimension (lame-eval
    --dimensions: the leading d components, renormalised), mean ± sd over seeds."""
    sized = {n: rs for n, rs in runs.items() if all("by_dimension" in r for r in rs)}
    if not sized:
        return None
    dims = list(next(iter(sized.values()))[0]["by_dimension"])
    head = [f"hit@1 @{d}" for d in dims] + [f"tier 2 @{d}" for d in dims]
    lines = [
        "Embedding size (eval.json `by_dimension`: the leading d components of the same "
        "embeddings, renormalised; mean ± sd over seeds):",
        "",
        "| run | seeds | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(head),
    ]
    for name, results in sized.items():
        cells = [str(summarise([r["by_dimension"][d]["hit@1"] for r in results])) for d in dims]
        cells += [
            str(summarise([r["by_dimension"][d]["per_group"]["tier2"]["hit@1"] for r in results]))
            for d in dims
        ]
        lines.append(f"| {label(name)} | {len(results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def optional_cells(results: list[dict], columns: dict) -> list[str]:
    """mean ± sd per column, "-" where some seed's file lacks the value (e.g. no decoder)."""
    cells = []
    for get in columns.values():
        values = [get(r) for r in results]
        cells.append(str(summarise(values)) if all(v is not None for v in values) else "-")
    return cells


def generation_table(root: Path) -> str | None:
    """The lm pre-training row: generated-answer exact match, mean ± sd over seeds."""
    files = sorted((root / "lm").glob("seed*/generate.json"))
    if not files:
        return None
    results = [json.loads(p.read_text()) for p in files]
    cells = optional_cells(results, GENERATION_COLUMNS)
    return "\n".join(
        [
            "Generative pre-training (`--method lm`), greedy generation on "
            f"{results[0]['n']} eval queries (percent):",
            "",
            "| run | seeds | " + " | ".join(GENERATION_COLUMNS) + " |",
            "|---|---|" + "---|" * len(GENERATION_COLUMNS),
            f"| lm pre-training | {len(results)} | " + " | ".join(cells) + " |",
        ]
    )


# probe.json (scripts/probes/probe_latents.py): decoder reconstruction from the K states, and
# held-out accuracy of ridge probes for the digits' sum from three places in the network.
PROBE_COLUMNS = {
    "recon. token acc (eval)": lambda r: (
        r.get("reconstruction", {}).get("eval_queries_held_out", {}).get("token_acc")
    ),
    "recon. exact (eval i2t)": lambda r: r.get("reconstruction", {}).get("eval_i2t", {}).get("answer_exact"),
    "recon. exact (eval t2i)": lambda r: r.get("reconstruction", {}).get("eval_t2i", {}).get("answer_exact"),
    "sum R²: K states": lambda r: r["probes"]["sum"].get("reason", {}).get("test_r2"),
    "sum R²: [EMBED]": lambda r: r["probes"]["sum"].get("embed", {}).get("test_r2"),
    "sum R²: last input": lambda r: r["probes"]["sum"].get("input", {}).get("test_r2"),
    "sum exact: K states": lambda r: r["probes"]["sum"].get("reason", {}).get("test_acc"),
    "sum exact: [EMBED]": lambda r: r["probes"]["sum"].get("embed", {}).get("test_acc"),
    "sum exact: constant": lambda r: r["probes"]["sum"].get("constant_acc"),
    # Tier-2 quantities ("-" for probe.json files written before probe_latents.py measured them).
    "oddsum R²: K states": lambda r: r["probes"].get("oddsum", {}).get("reason", {}).get("test_r2"),
    "oddsum R²: [EMBED]": lambda r: r["probes"].get("oddsum", {}).get("embed", {}).get("test_r2"),
    "oddsum R²: last input": lambda r: r["probes"].get("oddsum", {}).get("input", {}).get("test_r2"),
    "range R²: K states": lambda r: r["probes"].get("range", {}).get("reason", {}).get("test_r2"),
    "range R²: [EMBED]": lambda r: r["probes"].get("range", {}).get("embed", {}).get("test_r2"),
}


def probe_table(probes: dict[str, list[dict]]) -> str:
    lines = [
        "Probes (`scripts/probes/probe_latents.py`; mean ± sd over seeds; reconstruction and "
        "exact-sum accuracies in percent, R² as a fraction; sum probes scored on held-out "
        "eval image queries, ridge strength chosen on a validation split of training "
        "rows):",
        "",
        "| run | seeds | " + " | ".join(PROBE_COLUMNS) + " |",
        "|---|---|" + "---|" * len(PROBE_COLUMNS),
    ]
    for name, results in probes.items():
        cells = optional_cells(results, PROBE_COLUMNS)
        lines.append(f"| {label(name)} | {len(results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="+")
    parser.add_argument("--rows", default=",".join(LABELS))
    parser.add_argument("--baseline", default="discriminative")
    parser.add_argument("--data-out", type=Path, help="also write each table as DIR/PREFIX*.csv")
    parser.add_argument("--prefix", default="quality", help="file name prefix under --data-out")
    parser.add_argument(
        "--command", help="the command that made the runs (default: this command line)", default=None
    )
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    first = args.roots[0]
    runs, probes = load(first, names), load(first, names, file="probe.json")
    vals = load(first, names, file="val.json")
    for root in args.roots[1:]:
        suffix = "@" + root.name.removeprefix(first.name).lstrip("-_")
        runs.update(load(root, names, suffix))
        probes.update(load(root, names, suffix, file="probe.json"))
        vals.update(load(root, names, suffix, file="val.json"))
    generation = generation_table(first)
    if not runs and not generation:
        raise SystemExit(f"error: no eval.json under {first} for rows {args.rows}")
    # (data-file suffix, markdown): printed in this order, and written with --data-out.
    parts: list[tuple[list[str], str]] = []
    if runs:
        main_tables = tables(runs, args.baseline)
        has_diff = len(parse_markdown_tables(main_tables)) == 3
        parts.append((["", "_diff", "_tasks"] if has_diff else ["", "_tasks"], main_tables))
    if generation:
        parts.append((["_generation"], generation))
    if probes:
        parts.append((["_probes"], probe_table(probes)))
    if vals:
        parts.append((["_val"], validation_table(vals)))
    sizes = dimension_table(runs)
    if sizes:
        parts.append((["_dims"], sizes))
    print("\n\n".join(text for _, text in parts))
    if args.data_out:
        prov = provenance(args.command)
        for suffixes, text in parts:
            for suffix, (header, rows) in zip(suffixes, parse_markdown_tables(text)):
                path = write_table(args.data_out / f"{args.prefix}{suffix}.csv", header, rows, prov)
                print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
