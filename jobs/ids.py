"""`unlearn ids --data URI`: the sample ids of a dataset, picked by split, class and a pattern, one per line: what
goes into a deletion request file (`unlearn forget --ids FILE`).

It reads the shards' index columns only (sample_id, label, split), never an image. An ImageFolder's ids are
`train/<class>/<file>`, the path under the folder `unlearn prepare` read, so a user's own files are found with
`--match 'train/*/user42_*'`; digits and synthetic ids are generated names (`dh-00042`). Only training samples
can be forgotten, so the default split is train. The ids are printed sorted; the count goes to stderr.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys

from jobs.common import add_endpoint_flag, apply_endpoint, run_main
from jobs.paths import absolute_args
from pipeline import storage
from pipeline.errors import ConfigError, DataError

SPLITS = ("train", "val", "test", "all")
FORMATS = ("text", "csv")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearn ids", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard dataset URI (local path or s3://bucket/prefix)")
    p.add_argument("--split", choices=SPLITS, default="train",
                   help="the stored split (default train: only training samples can be forgotten)")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="CLASS",
                   help="a class name (an ImageFolder's folder name) or label number; repeat for several")
    p.add_argument("--match", action="append", default=[], metavar="GLOB",
                   help="a shell pattern the whole id must match, e.g. 'train/*/user42_*'; repeat for several "
                        "(an id matching any is kept)")
    p.add_argument("--limit", type=int, help="at most this many ids (the first in sorted order)")
    p.add_argument("--format", choices=FORMATS,
                   help="text: one id per line (a request file as it is); csv: sample_id,label,class,split with a "
                        "header, which forget reads from a .csv file (default: csv for an --out ending in .csv, "
                        "else text)")
    p.add_argument("--out", help="write the ids to this file (atomically) instead of printing them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_endpoint_flag(p)
    return p


def check_flags(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {args.limit}")
    if args.out and args.out.endswith(("/", "\\")):
        raise ConfigError(f"--out {args.out!r} names a folder; give a file, e.g. request.txt")
    suffix = (args.out or "").lower().rpartition(".")[2]
    if suffix == "parquet":
        raise ConfigError("--out: ids are written as text or .csv; give a .txt or .csv file")
    # forget reads a file by its suffix: a .csv as a table with a header, anything else as one id per line.
    if args.format == "text" and suffix == "csv":
        raise ConfigError(f"--format text into {args.out}: forget reads a .csv file as a table; give a .txt file "
                          "or --format csv")
    if args.format == "csv" and args.out and suffix != "csv":
        raise ConfigError(f"--format csv into {args.out}: forget reads only a .csv file as a table; end it in .csv")
    args.format = args.format or ("csv" if suffix == "csv" else "text")


def class_labels(names: list[str], class_names: list[str], data: str) -> set[int]:
    """Labels of the --class values: a class name first (ImageFolder folders may be named '3'), else a number."""
    labels = set()
    for name in names:
        if name in class_names:
            labels.add(class_names.index(name))
        elif name.isdigit() and int(name) < len(class_names):
            labels.add(int(name))
        else:
            shown = ", ".join(class_names[:20]) + (f", ... ({len(class_names)} in all)" if len(class_names) > 20 else "")
            raise ConfigError(f"--class {name!r}: {data} has no such class; its classes: {shown}")
    return labels


def select(rows: list[dict], split: str, labels: set[int], patterns: list[str]) -> list[dict]:
    """The index rows of the split, of any of the labels (all without), whose id matches any pattern (all
    without), sorted by id. fnmatchcase: ids are compared as stored, case included, on every platform."""
    chosen = [row for row in rows
              if (split == "all" or row["split"] == split)
              and (not labels or row["label"] in labels)
              and (not patterns or any(fnmatch.fnmatchcase(row["sample_id"], p) for p in patterns))]
    return sorted(chosen, key=lambda row: row["sample_id"])


def no_match_error(args: argparse.Namespace, rows: list[dict]) -> DataError:
    """Says what was asked and shows ids of the split, so the id format is visible to fix the pattern."""
    asked = " ".join([f"--split {args.split}"] + [f"--class {c}" for c in args.classes]
                     + [f"--match {m!r}" for m in args.match])
    examples = sorted(row["sample_id"] for row in rows if args.split == "all" or row["split"] == args.split)[:3]
    seen = f"; its {args.split} ids look like: {', '.join(examples)}" if examples else \
        f"; it has no {args.split} samples"
    return DataError(f"no sample of {args.data} matches {asked}{seen}")


def render(chosen: list[dict], class_names: list[str], form: str) -> str:
    if form == "text":
        return "".join(f"{row['sample_id']}\n" for row in chosen)
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample_id", "label", "class", "split"])
    writer.writerows([row["sample_id"], row["label"], class_names[row["label"]], row["split"]] for row in chosen)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_flags(args)
    absolute_args(args, paths=("data", "out"))
    apply_endpoint(args)
    if args.out and os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out} is a folder; give a file, e.g. request.txt")
    if args.out and storage.exists(args.out) and not args.overwrite:
        raise ConfigError(f"{args.out} exists (perhaps a request already sent); give another --out, or --overwrite")
    from pipeline.data.shards import read_index, read_meta

    meta = read_meta(args.data)
    labels = class_labels(args.classes, meta.class_names, args.data)
    rows = read_index(args.data, meta).to_pylist()
    chosen = select(rows, args.split, labels, args.match)
    if not chosen:
        raise no_match_error(args, rows)
    total = len(chosen)
    chosen = chosen[:args.limit] if args.limit else chosen
    text = render(chosen, meta.class_names, args.format)
    if args.out:
        storage.write_text(args.out, text)
    else:
        sys.stdout.write(text)
    kept = f"{len(chosen)} of {total}" if len(chosen) < total else f"{total}"
    where = f" written to {args.out}" if args.out else ""
    print(f"{kept} {'sample' if args.split == 'all' else args.split} id(s) of {meta.name}{where}"
          + ("" if args.split != "train" else
             f"; forget them with: unlearn forget --data {args.data} --ids {args.out or 'FILE'} ... "
             "(docs/deletion.md)"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
