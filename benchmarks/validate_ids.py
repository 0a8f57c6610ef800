"""How long `unlearn forget` takes to validate a deletion request before any compute, at ImageNet-1k size.

    python -m benchmarks.validate_ids [--ids 100000] [--train 1281167] [--val 50000]

Builds an ImageNet-shaped index (ids like n01440764_10026.JPEG), a request file of --ids training ids (text,
CSV and Parquet) and an earlier forgotten request of the same size (already removed from the index, as an
accepted request removes its samples from the dataset), then times what the job does before Ray starts: reading
the list, its HMACs checked against the earlier request's tombstones, every training id checked against them too
(no forgotten sample came back), every id checked against the index, and D_r. No image is read.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.forget import refuse_repeated, refuse_returned
from pipeline.data.id_lists import check_training_ids, read_sample_ids
from pipeline.data.splits import build_splits
from pipeline.deletion.chain import ChainState
from pipeline.deletion.keys import key_from_secret


def imagenet_index(train: int, val: int) -> pa.Table:
    classes = np.arange(train + val) % 1000
    ids = np.char.add(np.char.add(np.char.add("n", np.char.zfill((1440764 + classes).astype(str), 8)), "_"),
                      np.char.add(np.arange(train + val).astype(str), ".JPEG"))
    split = np.where(np.arange(train + val) < train, "train", "val")
    return pa.table({"sample_id": ids, "label": classes.astype(np.int32), "split": split})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=100_000)
    p.add_argument("--train", type=int, default=1_281_167)
    p.add_argument("--val", type=int, default=50_000)
    args = p.parse_args(argv)
    index = imagenet_index(args.train, args.val)
    rng = np.random.default_rng(0)
    train_ids = index.column("sample_id").to_numpy(zero_copy_only=False)[: args.train]
    chosen = rng.choice(args.train, size=2 * args.ids, replace=False)
    earlier, request = train_ids[chosen[: args.ids]].tolist(), train_ids[chosen[args.ids:]].tolist()
    kept = np.ones(index.num_rows, dtype=bool)
    kept[chosen[: args.ids]] = False
    index = index.filter(kept)  # the earlier request's samples were removed from the dataset
    key = key_from_secret(secrets.token_hex(32), "a fresh random secret")
    keys = {key.version: key}
    state = ChainState(2, None, None, {key.version: {h: "earlier" for h in key.tombstones(earlier)}})
    with tempfile.TemporaryDirectory() as folder:
        files = {"text": Path(folder) / "ids.txt", "csv": Path(folder) / "ids.csv",
                 "parquet": Path(folder) / "ids.parquet"}
        files["text"].write_text("\n".join(request) + "\n")
        files["csv"].write_text("sample_id\n" + "\n".join(request) + "\n")
        pq.write_table(pa.table({"sample_id": request}), files["parquet"])
        print(f"index: {index.num_rows:,} rows ({args.train - args.ids:,} train); request: {args.ids:,} ids; "
              f"an earlier request of {args.ids:,} ids in the chain, removed from the index")
        for kind, path in files.items():
            started = time.perf_counter()
            read_sample_ids(str(path))
            print(f"  read the list ({kind:<7})            {time.perf_counter() - started:6.2f} s")
        steps = []
        started = time.perf_counter()
        requested = read_sample_ids(str(files["text"]))
        steps.append(("read the list (text)", time.perf_counter()))
        refuse_repeated(str(files["text"]), sorted(set(requested)), state, keys)
        steps.append(("HMACs vs the earlier tombstones", time.perf_counter()))
        refuse_returned("the index", index, state, keys)
        steps.append(("every training id vs the tombstones", time.perf_counter()))
        checked = check_training_ids(index, requested)
        assert len(checked.train) == args.ids and not checked.missing
        steps.append(("check every id against the index", time.perf_counter()))
        splits = build_splits(index, "request:bench", 0, checked.train)
        steps.append(("D_r: train without the request", time.perf_counter()))
    mark = started
    for name, at in steps:
        print(f"  {name:<36} {at - mark:6.2f} s")
        mark = at
    print(f"validation before any compute: {steps[-1][1] - started:.2f} s "
          f"(D_f {splits.count('forget'):,}, D_r {splits.count('retain'):,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
