"""Benchmark: the published tables (Xie 2016 Table 1, Cohen 2017 Tables 1-2) on this machine.

Runs ``celltally benchmark`` (its Python API) for each table below and writes its section of
benchmarks/RESULTS.md. Everything resumes: finished draws are read back, not recomputed. The
records, tables and plots (``benchmarks/tables/<data>/``) are committed, so a fresh clone can
rewrite the tables (``--report``) and resume; the trained networks (``runs/`` there) are not.

    python benchmarks/tables.py                 # every table
    python benchmarks/tables.py --only mbm      # one of: vgg_cells, mbm, adipocyte
    python benchmarks/tables.py --only vgg_cells --n 32   # the draws of one N first
    python benchmarks/tables.py --report        # the sections from the finished draws only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from celltally.benchmark import BenchmarkConfig, run_benchmark, write_reports
from results import TABLES_OUT, write_section

METHODS = ("mean", "segmentation", "fcrn_a", "fcrn_b")
# The recipes measured for VGG cells N = 32 (see the fcrn_* sections): about 16 and 18 minutes
# per draw on 2 cores, FCRN-B's capped by a time budget.
SETTINGS = {
    "fcrn_a": {"epochs": 24, "lr_step": 10, "finetune_epochs": 6},
    "fcrn_b": {"batch_size": 8, "steps_per_epoch": 200, "epochs": 7, "lr_step": 5,
               "finetune_epochs": 0, "time_budget": 1150},
}  # fmt: skip
TABLES = {
    "vgg_cells": {"protocol": "lempitsky", "n": (8, 16, 32, 50)},
    "mbm": {"protocol": "countception", "n": (15,)},
    "adipocyte": {"protocol": "countception", "n": (50,)},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=sorted(TABLES), action="append")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="a subset, comma-separated")
    parser.add_argument("--n", type=int, action="append", help="train these N only (default: all)")
    parser.add_argument("--out", type=Path, default=TABLES_OUT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="train nothing; write the tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only or TABLES:
        table = TABLES[name]
        methods = tuple(args.methods.split(","))
        config = BenchmarkConfig(
            data=name, methods=methods, draws=args.draws, settings=SETTINGS,
            protocol=table["protocol"], n=tuple(args.n or table["n"]),
        )  # fmt: skip
        out = args.out / name
        if args.report:
            write_reports(out, name)
        else:
            run_benchmark(config, out, on_record=lambda r: print(_line(r), flush=True))
        command = f"python benchmarks/tables.py --only {name}"
        text = "\n".join(
            [
                f"### {name}: published table, {table['protocol']} protocol",
                "",
                f"Command: `{command}` (the same as `celltally benchmark --data {name}"
                f" --protocol {table['protocol']} {' '.join(f'--n {n}' for n in table['n'])}"
                f" --draws 3 --methods {','.join(METHODS)} --config SETTINGS.json`, with"
                " SETTINGS.json ="
                f" `{json.dumps(SETTINGS)}`). Records and splits:"
                f" `benchmarks/tables/{name}/records`; plot:"
                f" `benchmarks/tables/{name}/mae_vs_n.png`.",
                "",
                (out / "table.md").read_text(),
            ]
        )
        write_section(f"table-{name}", text)
        print(text)


def _line(record: dict) -> str:
    return (
        f"{record['dataset']} {record['method']} N={record['n']} seed {record['seed']}:"
        f" MAE {record['count']['mae']:.2f} ({record['train_time_s'] / 60:.1f} min)"
    )


if __name__ == "__main__":
    main()
