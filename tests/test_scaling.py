"""benchmarks/scaling.py: phase times from records, growth against the image count, the table; no Ray.

(No end-to-end run here: one class count is two Ray start-ups and a training, over a minute on 2 cores.)
"""

import dataclasses
import io

import pandas as pd
import pytest

from benchmarks import scaling
from jobs import bench
from pipeline.data.shards import DatasetMeta
from pipeline.errors import ConfigError
from pipeline.results.records import ResultRecord

METHODS = ["finetune", "lotus"]


def fit_record(method, unlearn, unlearn_images, *, startup=20.0, data=4.0, eval_seconds=3.0, eval_images=600,
               data_images=600, total=60.0):
    """A bench record of one row of a fit: the shared phases (startup, data, total) and its own."""
    return ResultRecord(
        run_id=f"bench-{method}", kind="unlearn", method=method, dataset="synthetic-imagenet", model="cnn",
        seed=3407, forget_spec="limited:5/45",
        phases={"startup": startup, "data": data, "unlearn": unlearn, "epoch_reports": 0.0, "eval": eval_seconds,
                "total": total},
        images={"data": data_images, "unlearn": unlearn_images, "eval": eval_images},
        input_wait={"unlearn": 0.0, "eval": 0.0}, unlearn_seconds=unlearn)


def size(classes, factor, lotus_factor=None, eval_factor=None, images_recorded=True, bench_others=0.1):
    """Class count `classes` with `factor` x the images of the base (10 classes, 60 images a class): every
    phase `factor` x the base's seconds unless another factor is given, startup constant."""
    lotus_factor, eval_factor = lotus_factor or factor, eval_factor or factor
    counts = {"train": 500 * factor, "val": 50 * factor, "test": 50 * factor}
    records = [fit_record("original", 0.0, 0, data=4.0 * factor, eval_seconds=3.0 * eval_factor,
                          eval_images=600 * factor, data_images=600 * factor),
               fit_record("finetune", 10.0 * factor, 450 * factor, data=4.0 * factor,
                          eval_seconds=3.0 * eval_factor, eval_images=600 * factor, data_images=600 * factor),
               fit_record("lotus", 20.0 * lotus_factor, 1000 * factor, data=4.0 * factor,
                          eval_seconds=3.0 * eval_factor, eval_images=600 * factor, data_images=600 * factor)]
    if not images_recorded:  # records written before `images` existed
        records = [dataclasses.replace(r, images={}) for r in records]
    timing = {"prepare_seconds": 12.0 * factor, "bench_wall_seconds": 100.0 + 50.0 * factor, "cpus": 2,
              "contention": {"prepare": {"other_cores": 0.05}, "bench": {"other_cores": bench_others}}}
    original = {"train_seconds": 30.0 * factor, "epochs_run": 6}
    return scaling.size_result(classes, counts, timing, original, records, METHODS)


def test_phase_times_and_rates_from_records():
    result = size(10, 1)
    assert result.images == 600
    assert list(result.phases) == ["prepare", "train original", "startup", "data", "unlearn finetune",
                                   "unlearn lotus", "eval", "fit total", "bench wall"]
    assert result.phases["prepare"] == scaling.PhaseTime(12.0, 600)
    assert result.phases["train original"] == scaling.PhaseTime(30.0, 3000)  # 500 train images x 6 epochs
    assert result.phases["train original"].rate == pytest.approx(100.0)
    assert result.phases["unlearn lotus"].rate == pytest.approx(50.0)  # 1000 images in 20 s
    assert result.phases["eval"] == scaling.PhaseTime(3.0, 600)  # mean per evaluated row
    assert result.phases["startup"].rate is None and result.phases["fit total"].seconds == 60.0


def test_linear_growth_reads_one_and_fixed_costs_read_below_one():
    base, large = size(10, 1), size(100, 10)
    for phase in ("prepare", "train original", "data", "unlearn finetune", "unlearn lotus", "eval"):
        assert scaling.growth(base, large, phase) == pytest.approx(1.0), phase
    assert scaling.growth(base, large, "startup") == pytest.approx(0.1)  # the same 20 s for 10x the images
    assert scaling.growth(base, large, "bench wall") == pytest.approx((600 / 150) / 10)
    assert scaling.worse_than_linear([base, large]) == []


def test_worse_than_linear_phases_are_flagged_with_their_growth():
    base, middle, large = size(10, 1), size(30, 3, lotus_factor=3.3), size(100, 10, eval_factor=20)
    assert scaling.growth(base, middle, "unlearn lotus") == pytest.approx(1.1)  # within the band
    assert scaling.growth(base, large, "eval") == pytest.approx(2.0)
    assert scaling.worse_than_linear([large, base, middle]) == [("eval", 100, pytest.approx(2.0))]
    text = scaling.markdown([large, base, middle])
    lines = text.splitlines()
    assert lines[0] == ("| Phase | 10 classes | 30 classes | 100 classes | growth 10→30 (×3.0 images) "
                        "| growth 10→100 (×10.0 images) |")
    assert lines[2] == "| images | 600 | 1,800 | 6,000 |  |  |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert rows["eval"] == "| eval | 3.0 s (200/s) | 9.0 s (200/s) | 60.0 s (100/s) | 1.00 | **2.00 ↑** |"
    assert rows["unlearn lotus"] == ("| unlearn lotus | 20.0 s (50/s) | 66.0 s (45.5/s) | 200.0 s (50/s) "
                                     "| 1.10 | 1.00 |")
    assert rows["startup"] == "| startup | 20.0 s | 20.0 s | 20.0 s | 0.33 | 0.10 |"
    assert "Worse than linear: eval at 100 classes (2.00)." in text


def test_growth_is_against_the_dataset_images_and_other_image_growth_is_named():
    # Finetune at the larger size: its training pass grows with the data, its capped BatchNorm refresh does
    # not, so its own images grow 5.7x while the dataset grows 10x; its seconds grow 10x: linear.
    base, large = size(10, 1), size(100, 10)
    finetune = base.phases["unlearn finetune"]
    base.phases["unlearn finetune"] = scaling.PhaseTime(finetune.seconds, 900)  # 450 trained + 450 refreshed
    large.phases["unlearn finetune"] = scaling.PhaseTime(large.phases["unlearn finetune"].seconds, 5150)
    assert scaling.growth(base, large, "unlearn finetune") == pytest.approx(1.0)
    assert scaling.own_image_ratio(base, large, "unlearn finetune") == pytest.approx(5150 / 900)
    assert scaling.other_image_growth([base, large]) == [("unlearn finetune", 100, pytest.approx(5150 / 900), 10.0)]
    assert "unlearn finetune ×5.72 at 100 classes (dataset ×10.0)" in scaling.legend([base, large])
    # Records without images (older ones): no rate, the same growth.
    old_base, old_large = size(10, 1, images_recorded=False), size(100, 10, images_recorded=False)
    assert old_large.phases["unlearn lotus"].images is None and old_large.phases["unlearn lotus"].rate is None
    assert scaling.growth(old_base, old_large, "unlearn lotus") == pytest.approx(1.0)
    assert scaling.other_image_growth([old_base, old_large]) == []


def test_csv_is_long_format_with_growth_and_the_plot_is_a_png(tmp_path):
    results = [size(10, 1), size(30, 3), size(100, 10, eval_factor=20)]
    frame = pd.read_csv(io.StringIO(scaling.csv_text(results)))
    assert list(frame.columns) == ["phase", "classes", "dataset_images", "phase_images", "seconds", "images_per_s",
                                   "growth", "own_image_ratio"]
    assert len(frame) == 9 * 3
    row = frame[(frame.phase == "eval") & (frame.classes == 100)].iloc[0]
    assert (row.seconds, row.phase_images, row.images_per_s, row.growth) == (60.0, 6000, 100.0, 2.0)
    assert frame[frame.classes == 10].growth.tolist() == [1.0] * 9
    written = scaling.write_outputs(results, str(tmp_path))
    assert open(written["scaling.png"], "rb").read().startswith(b"\x89PNG")
    assert "**2.00 ↑**" in open(written["scaling.md"], encoding="utf-8").read()


def test_every_class_count_gets_its_own_data_and_models():
    sets = scaling.overrides("runs/scaling", 300, ["settings.lotus.epochs=1"])
    assert sets == ["data.synthetic.classes=300", "data.uri=runs/scaling/data/c300",
                    "models=runs/scaling/c300/models", "settings.lotus.epochs=1"]
    config = bench.load_config("configs/imagenet-synthetic.yaml", sets)
    assert config["data"]["synthetic"] == {"classes": 300, "size": 32, "train_per_class": 50, "val_per_class": 5,
                                           "test_per_class": 5}
    assert config["forget"] == "limited:5/45" and config["gold"] is False


def test_the_bench_refuses_shards_prepared_from_other_settings():
    data = bench.load_config("configs/imagenet-synthetic.yaml", ["data.synthetic.classes=300"])["data"]
    meta = DatasetMeta(name="x", num_classes=1000, class_names=[], height=32, width=32, channels=3,
                       encoding="jpeg", extra={"source": "synthetic-imagenet", "seed": 0, "synthetic": {
                           "classes": 1000, "size": 32, "train_per_class": 50, "val_per_class": 5,
                           "test_per_class": 5}})
    with pytest.raises(ConfigError, match="prepared from other settings .*'classes': 1000.* there"):
        bench.check_prepared_from(data, meta)
    meta.extra["synthetic"]["classes"] = 300
    bench.check_prepared_from(data, meta)  # the same settings: taken
    bench.check_prepared_from(data, dataclasses.replace(meta, extra={}))  # no recorded source: taken as is


def test_a_busy_machine_is_flagged_so_its_seconds_are_not_read_as_growth():
    quiet, busy = size(10, 1), size(100, 10, bench_others=0.9)  # 2 cores: above 20 % of them, 0.4
    assert quiet.busy_steps() == [] and busy.busy_steps() == ["bench"]
    text = scaling.markdown([quiet, busy])
    assert "| other processes' cores (prepare / bench) | 0.05 / 0.10 | 0.05 / 0.90 ⚠ |  |" in text
    assert "**Other processes shared the CPU** during 100 classes (bench)" in text
    assert "**Other processes shared the CPU**" not in scaling.markdown([quiet, size(100, 10)])


def test_cpu_monitor_counts_the_cores_other_processes_used(monkeypatch):
    import itertools

    # Scripted counters, 1 s apart: the machine busy 150 ticks a second, this tree 100 (2 cores, 100 Hz):
    # others kept half a core busy. In the third second a descendant is reaped outside the tree and the
    # tree's count drops: that interval cannot be split and is left out.
    clock = itertools.count(0.0, 1.0)
    system = iter([0, 150, 300, 450])
    tree = iter([0, 100, 200, 100])
    monkeypatch.setattr(scaling.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(scaling, "_system_busy_ticks", lambda: next(system))
    monkeypatch.setattr(scaling, "_tree_ticks", lambda root: next(tree))
    monkeypatch.setattr(scaling.os, "sysconf", lambda name: 100)
    monitor = scaling.CpuMonitor()
    last = monitor._take()
    for _ in range(3):
        last = monitor._add(last)
    assert monitor.seconds == 2.0 and monitor.other_ticks == 50 + 50
    assert monitor.summary()["other_cores"] == pytest.approx(0.5)


def test_tree_ticks_include_this_process_work():
    import os
    import time

    before = scaling._tree_ticks(os.getpid())
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        pass
    assert scaling._tree_ticks(os.getpid()) - before >= 0.1 * os.sysconf("SC_CLK_TCK")
    assert scaling._system_busy_ticks() > 0
