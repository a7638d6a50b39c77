"""Run the quality table's rows on several workers at once (one torch thread each).

    python scripts/quality/quality_parallel.py --workers 2 --seeds 0 1 2 -- ROW [ROW ...]
    python scripts/quality/quality_parallel.py ... -- lm lame --variant reasoning=data/digits-reasoning \
        lame gen-lame --variant = no-mask

Each job is one (row, seed) of ``scripts/quality/quality_runs.sh``, which does the work and skips runs
already done, so this driver can be killed and re-run. Jobs are taken in the order given (rows
outer, seeds inner), so the rows that matter most come first; a job waits until the runs it
reads exist (a gen-* row needs that seed's lm run, a wall-* row the lame and base rows), so two
workers never make the same run. ``--variant NAME=DATA ROW...`` runs rows on another dataset
into ROOT-NAME/, sharing ROOT/lm (one pre-trained backbone, hence one tokenizer, for both).
Budget variables (STEPS, PRETRAIN_STEPS, ...) pass through the environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("quality_runs.sh")


@dataclass
class Job:
    row: str
    seed: int
    root: Path
    data: str
    taken: bool = False

    def done_file(self) -> Path:
        name = "generate.json" if self.row == "lm" else "eval.json"
        return self.root / self.row / f"seed{self.seed}" / name

    def needs(self, main_root: Path) -> list[Path]:
        seed_dir = f"seed{self.seed}"
        if self.row.startswith("gen-"):
            return [main_root / "lm" / seed_dir / "generate.json"]
        if self.row.startswith("wall-"):
            base = self.row.removeprefix("wall-")
            return [self.root / name / seed_dir / "eval.json" for name in ("lame", base)]
        return []


def parse_jobs(argv: list[str]) -> tuple[argparse.Namespace, list[Job]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default=os.environ.get("ROOT", "runs/quality"))
    parser.add_argument("--data", default=os.environ.get("DATA", "data/digits"))
    parser.add_argument("--log", default=None, help="append every job's stderr here")
    if "--" not in argv:
        parser.error("give the rows after '--': ROW ... [--variant NAME=DATA ROW ...]")
    split = argv.index("--")
    args, tokens = parser.parse_args(argv[:split]), argv[split + 1 :]
    root, data = Path(args.root), args.data
    jobs: list[Job] = []
    rows: list[str] = []

    def flush() -> None:
        jobs.extend(Job(row, seed, root, data) for row in rows for seed in args.seeds)
        rows.clear()

    it = iter(tokens)
    for token in it:
        if token == "--variant":
            flush()
            name, _, variant_data = next(it).partition("=")
            if not name:  # "--variant =": back to the main dataset and root
                root, data = Path(args.root), args.data
                continue
            root, data = Path(f"{args.root}-{name}"), variant_data
            root.mkdir(parents=True, exist_ok=True)
            if not (root / "lm").exists():  # the shared pre-trained backbone
                (root / "lm").symlink_to(Path(args.root).resolve() / "lm")
        else:
            rows.append(token)
    flush()
    return args, jobs


def main(argv: list[str] | None = None) -> int:
    args, jobs = parse_jobs(sys.argv[1:] if argv is None else argv)
    main_root = Path(args.root)
    lock = threading.Lock()
    failures: list[str] = []
    listed = {job.done_file() for job in jobs}

    def next_job() -> Job | None:
        while True:
            with lock:
                pending = [job for job in jobs if not job.taken]
                if not pending:
                    return None
                for job in pending:
                    # A run no job makes is left to quality_runs.sh (it makes missing inputs).
                    needs = [p for p in job.needs(main_root) if p in listed]
                    if all(path.is_file() for path in needs):
                        job.taken = True
                        return job
                blocked_on_failure = all(
                    any(str(p) in failures for p in job.needs(main_root)) for job in pending
                )
                if blocked_on_failure:
                    return None
            time.sleep(10)

    def worker() -> None:
        while (job := next_job()) is not None:
            env = {
                **os.environ,
                "SEEDS": str(job.seed),
                "ROOT": str(job.root),
                "DATA": job.data,
                "THREADS": os.environ.get("THREADS", "1"),
            }
            log = open(args.log, "a") if args.log else None
            code = subprocess.call(
                ["bash", str(SCRIPT), job.row], env=env, stderr=log, stdout=subprocess.DEVNULL
            )
            if log:
                log.close()
            if code != 0:
                with lock:
                    failures.append(str(job.done_file()))
                print(
                    f"FAILED {job.root}/{job.row} seed {job.seed} (exit {code})", file=sys.stderr, flush=True
                )

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
