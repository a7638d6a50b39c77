"""Markdown tables from scripts/quality_runs.sh's runs: overall / tier / per-task hit@1.

    python scripts/quality_table.py runs/quality [--rows lame,discriminative,...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {
    "lame": "LaME (K=8, mask, decoder, diversity, two stages)",
    "discriminative": "discriminative (K=0, VLM2Vec style)",
    "cot": "explicit CoT (UME-R1 style, generates then embeds)",
    "latent": "latent multi-step (K=8 steps, Coconut style)",
    "k2": "LaME K=2", "k4": "LaME K=4", "k16": "LaME K=16",
    "no-mask": "LaME without bottleneck mask", "no-decoder": "LaME without decoder head",
    "no-diversity": "LaME without diversity term", "one-stage": "LaME, joint stage only",
}


def load(root: Path, names: list[str]) -> dict[str, dict]:
    runs = {}
    for name in names:
        path = root / name / "eval.json"
        if path.is_file():
            runs[name] = json.loads(path.read_text())
    return runs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--rows", default=",".join(LABELS))
    args = parser.parse_args(argv)
    runs = load(args.root, args.rows.split(","))
    print("| run | hit@1 | tier 1 | tier 2 | ndcg@10 |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        groups = r["per_group"]
        print(f"| {LABELS.get(name, name)} | {r['hit@1']:.2f} | {groups['tier1']['hit@1']:.2f} | "
              f"{groups['tier2']['hit@1']:.2f} | {r['ndcg@10']:.2f} |")
    print()
    names = list(runs)
    print("| task (hit@1) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for task in next(iter(runs.values()))["per_task"]:
        print(f"| {task} | " + " | ".join(f"{runs[n]['per_task'][task]['hit@1']:.1f}"
                                         for n in names) + " |")


if __name__ == "__main__":
    main()
