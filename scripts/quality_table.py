"""Markdown tables from scripts/quality_runs.sh's runs: mean ± sd over seeds of overall /
tier / per-task hit@1, and each row's difference to a baseline row.

    python scripts/quality_table.py runs/quality [--rows lame,discriminative,...]
                                                 [--baseline discriminative]

A row is ``ROOT/NAME/seed*/eval.json`` (one per seed) or, for single-seed runs of earlier
releases, ``ROOT/NAME/eval.json``. Differences smaller than twice their standard error are
flagged "not significant". The lm pre-training runs (``ROOT/lm/seed*/generate.json``) get
their own table: exact match of the generated answers.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lame.stats import compare, summarise

LABELS = {
    "lame": "LaME (K=8, mask, decoder, diversity, two stages)",
    "discriminative": "discriminative (K=0, VLM2Vec style)",
    "cot": "explicit CoT (UME-R1 style, generates then embeds)",
    "latent": "latent multi-step (K=8 steps, Coconut style)",
    "k2": "LaME K=2", "k4": "LaME K=4", "k16": "LaME K=16",
    "no-mask": "LaME without bottleneck mask", "no-decoder": "LaME without decoder head",
    "no-diversity": "LaME without diversity term", "one-stage": "LaME, joint stage only",
    "gen-lame": "LaME, generative init", "gen-discriminative": "discriminative, generative init",
    "gen-cot": "explicit CoT, generative init", "gen-latent": "latent, generative init",
    "gen-no-mask": "LaME without mask, generative init",
    "wall-discriminative": "discriminative, LaME's wall time", "wall-cot": "explicit CoT, "
    "LaME's wall time", "wall-latent": "latent, LaME's wall time",
}
# The lm pre-training runs (ROOT/lm/seed*/generate.json): exact match of generated answers.
GENERATION_COLUMNS = {
    "exact match": lambda r: r.get("exact_match"),
    "i2t exact": lambda r: r["per_direction"].get("i2t", {}).get("exact_match"),
    "t2i exact": lambda r: r["per_direction"].get("t2i", {}).get("exact_match"),
    "digits read": lambda r: r.get("digits_read"),
}
COLUMNS = {"hit@1": lambda r: r["hit@1"], "tier 1": lambda r: r["per_group"]["tier1"]["hit@1"],
           "tier 2": lambda r: r["per_group"]["tier2"]["hit@1"], "ndcg@10": lambda r: r["ndcg@10"]}


def load(root: Path, names: list[str]) -> dict[str, list[dict]]:
    """Row name -> the eval.json of each seed found."""
    runs = {}
    for name in names:
        files = sorted((root / name).glob("seed*/eval.json")) or \
            [p for p in [root / name / "eval.json"] if p.is_file()]
        if files:
            runs[name] = [json.loads(p.read_text()) for p in files]
    return runs


def tables(runs: dict[str, list[dict]], baseline: str) -> str:
    lines = ["| run | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, results in runs.items():
        cells = [str(summarise([get(r) for r in results])) for get in COLUMNS.values()]
        lines.append(f"| {LABELS.get(name, name)} | {len(results)} | " + " | ".join(cells) + " |")
    if baseline in runs:
        lines += ["", f"Difference to `{baseline}` (mean ± standard error; not significant "
                      "when smaller than 2 standard errors):", "",
                  "| run | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for name, results in runs.items():
            if name == baseline:
                continue
            cells = [str(compare(summarise([get(r) for r in results]),
                                 summarise([get(r) for r in runs[baseline]])))
                     for get in COLUMNS.values()]
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    names = list(runs)
    lines += ["", "| task (hit@1, mean over seeds) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for task in next(iter(runs.values()))[0]["per_task"]:
        lines.append(f"| {task} | " + " | ".join(
            f"{summarise([r['per_task'][task]['hit@1'] for r in runs[n]]).mean:.1f}"
            for n in names) + " |")
    return "\n".join(lines)


def generation_table(root: Path) -> str | None:
    """The lm pre-training row: generated-answer exact match, mean ± sd over seeds."""
    files = sorted((root / "lm").glob("seed*/generate.json"))
    if not files:
        return None
    results = [json.loads(p.read_text()) for p in files]
    cells = []
    for get in GENERATION_COLUMNS.values():
        values = [get(r) for r in results]
        cells.append(str(summarise(values)) if all(v is not None for v in values) else "-")
    return "\n".join([
        "Generative pre-training (`--method lm`), greedy generation on "
        f"{results[0]['n']} eval queries (percent):", "",
        "| run | seeds | " + " | ".join(GENERATION_COLUMNS) + " |",
        "|---|---|" + "---|" * len(GENERATION_COLUMNS),
        f"| lm pre-training | {len(results)} | " + " | ".join(cells) + " |"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--rows", default=",".join(LABELS))
    parser.add_argument("--baseline", default="discriminative")
    args = parser.parse_args(argv)
    runs = load(args.root, args.rows.split(","))
    generation = generation_table(args.root)
    if not runs and not generation:
        raise SystemExit(f"error: no eval.json under {args.root} for rows {args.rows}")
    if runs:
        print(tables(runs, args.baseline))
    if generation:
        print(("\n" if runs else "") + generation)


if __name__ == "__main__":
    main()
