"""The diffusion family (issue 22): SAFEMax on a small class-conditional DDPM trained on digits at 16x16.

The DDPM and the metrics classifier are trained once per module (and cached across runs while their code is
unchanged, as tests/conftest.py caches the original classifier). Margins, measured (docs/diffusion.md):
- forgetting: after SAFEMax (the published `safemax` and the project's `safemax-cutoff`) the classifier's accuracy
  on forgotten-class samples is at most chance (0.10) + 0.15 (measured 0.00 for both); the original model scores
  0.98 there, so it fails this check by more than 0.5;
- retention, safemax-cutoff: accuracy on the other classes' samples within 0.08 of the original's (measured on
  this module's 30-epoch DDPM: 0.924 vs 0.976; a less trained model is more fragile than the bench's 40-epoch one);
- retention, the published safemax (λ = 1, target ε_T): within 0.15 of the original's; over unlearning seeds
  3407, 0, 1, 2, 3 it measured 0.931, 0.933, 0.907, 0.882, 0.838 against the original's 0.976 (a drop of 0.04 to
  0.14), so the margin covers the spread of seeds, not just this module's seed;
- early steps: t >= 100 vs all t, measured retain 0.924 vs 0.873 and FID proxy 34.1 vs 46.5;
- noise: forgotten-class samples have a per-pixel std within 0.15 of clipped N(0, 1)'s (0.70 after DDIM's
  shrinkage; measured 0.66) and a neighbour correlation under 0.2 (measured 0.02), where digits have ≥ 0.6.
"""

import dataclasses
import hashlib
import pathlib

import pytest
import torch

from pipeline.errors import ConfigError, DataError
from tests.conftest import one_torch_thread

ROOT = pathlib.Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
FORGET, SEED, CLASSES = 3, 3407, 10
CHANCE = 1 / CLASSES
FORGET_MARGIN, RETAIN_MARGIN, PUBLISHED_RETAIN_MARGIN = 0.15, 0.08, 0.15
TEST_SPEC = {"num_classes": 10, "channels": 1, "image_size": 16, "widths": [16, 32, 32], "schedule": "linear"}
TRAIN_EPOCHS = 30
LEAK_SAMPLES, LEAK_ORIGINAL_FLOOR, LEAK_GAP = 50, 0.8, 0.3


def _code_key() -> str:
    digest = hashlib.sha256()
    for rel in ("pipeline/models/diffusion.py", "pipeline/models/diffusion_process.py",
                "pipeline/methods/diffusion_training.py", "pipeline/models/diffusion_data.py",
                "pipeline/models/diffusion_classifier.py", "pipeline/methods/base.py", "pipeline/data/converters.py",
                "pipeline/models/__init__.py"):
        digest.update((ROOT / rel).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def threads():
    """One torch thread: the tests run two to a 2-core machine, where two threads each ran 20x slower."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from pipeline.data.converters import prepare
    from pipeline.models.diffusion_data import load_diffusion_sources

    uri = str(tmp_path_factory.mktemp("digits"))
    prepare("digits", uri, seed=0)
    return uri, load_diffusion_sources(uri, FORGET, SEED, 16)


@pytest.fixture(scope="module")
def trained(digits, threads, request):
    """(original DDPM checkpoint, classifier checkpoint): trained once, cached while their code is unchanged."""
    from pipeline.methods.diffusion_training import train_classifier, train_ddpm
    from pipeline.models import save_checkpoint
    from pipeline.models.diffusion import DiffusionSpec, save_diffusion_checkpoint
    from pipeline.models.diffusion_classifier import classifier_spec

    _, sources = digits
    cache = pathlib.Path(request.config.cache.mkdir("diffusion-models"))
    ddpm, classifier = cache / f"ddpm-{_code_key()}.pt", cache / f"classifier-{_code_key()}.pt"
    if not ddpm.exists():
        spec = DiffusionSpec(**TEST_SPEC)
        model, _ = train_ddpm(spec, sources["train"], CPU, seed=0, settings={"epochs": TRAIN_EPOCHS})
        save_diffusion_checkpoint(model, spec, str(ddpm))
    if not classifier.exists():
        spec = classifier_spec(10, 1, 16)
        model, _ = train_classifier(spec, sources["train"], CPU)
        save_checkpoint(model, spec, str(classifier))
    return str(ddpm), str(classifier)


@pytest.fixture(scope="module")
def retrained(digits, threads, request):
    """The gold model: the tests' DDPM recipe on D_r (never saw class 3), cached as `trained` is."""
    from pipeline.methods.diffusion_training import train_ddpm
    from pipeline.models.diffusion import DiffusionSpec, save_diffusion_checkpoint

    _, sources = digits
    ddpm = pathlib.Path(request.config.cache.mkdir("diffusion-models")) / f"retrain-{_code_key()}.pt"
    if not ddpm.exists():
        spec = DiffusionSpec(**TEST_SPEC)
        model, _ = train_ddpm(spec, sources["retain"], CPU, seed=0, settings={"epochs": TRAIN_EPOCHS})
        save_diffusion_checkpoint(model, spec, str(ddpm))
    return str(ddpm)


def _plan():
    from pipeline.models.diffusion_process import SamplingPlan

    return SamplingPlan(per_class=50, steps=25, guidance=2.0, seed=SEED, clip=True)


@pytest.fixture(scope="module")
def evaluate(digits, trained):
    from pipeline.metrics.diffusion import evaluate_ddpm, real_retained_pixels
    from pipeline.models import load_checkpoint

    _, sources = digits
    classifier = load_checkpoint(trained[1])[0]
    reference = real_retained_pixels({"unseen": sources["unseen"], "test": sources["test"]}, [FORGET])

    def run(model):
        return evaluate_ddpm(model, classifier, reference, [FORGET], CLASSES, _plan(), CPU)

    return run


def _unlearn(digits, trained, settings, method="safemax-cutoff", seed=SEED):
    from pipeline.methods.base import UnlearnData
    from pipeline.methods.diffusion_base import unlearn_ddpm
    from pipeline.models.diffusion import load_diffusion_checkpoint

    _, sources = digits
    original = load_diffusion_checkpoint(trained[0])[0]
    model = load_diffusion_checkpoint(trained[0])[0]
    data = UnlearnData(forget=sources["forget"], retain=sources["retain"], num_classes=CLASSES,
                       forget_classes=(FORGET,))
    if method == "safemax-cutoff":  # its guidance correction tied to the evaluation's w (_plan: 2.0)
        settings = {"guidance": _plan().guidance, **settings}
    report, memory = unlearn_ddpm(method, settings, model, original, data, CPU, seed=seed, log=None)
    return model, report, memory


@pytest.fixture(scope="module")
def original_metrics(trained, evaluate):
    from pipeline.models.diffusion import load_diffusion_checkpoint

    return evaluate(load_diffusion_checkpoint(trained[0])[0])


@pytest.fixture(scope="module")
def safemax_metrics(digits, trained, evaluate):
    """The project's variant, safemax-cutoff (before issue 33 it was `safemax`)."""
    model, report, memory = _unlearn(digits, trained, {})
    return {**evaluate(model), "report": report, **memory}


@pytest.mark.quality
def test_published_safemax_forgets_the_class_and_keeps_the_others(digits, trained, evaluate, original_metrics):
    """The default `safemax` (ψ(t) = exp(−t/T) over all t, target ε_T): the forgotten class is gone, the others
    hold within PUBLISHED_RETAIN_MARGIN (its spread over 5 seeds is in the module docstring)."""
    model, report, _ = _unlearn(digits, trained, {}, method="safemax")
    metrics = evaluate(model)
    print(f"published safemax: forget {metrics['acc_forget_gen']:.3f} retain {metrics['acc_retain_gen']:.3f} "
          f"FID proxy {metrics['fid_proxy']:.1f} noise {metrics['noise_forget']}")
    assert original_metrics["acc_forget_gen"] >= CHANCE + FORGET_MARGIN + 0.5
    assert metrics["acc_forget_gen"] <= CHANCE + FORGET_MARGIN
    assert metrics["acc_retain_gen"] >= original_metrics["acc_retain_gen"] - PUBLISHED_RETAIN_MARGIN
    # ε_T teaches the model to predict zero noise for the class: DDIM's x0 estimate is the starting noise scaled
    # up, so the clipped samples sit at ±1 (pixel std 0.998 measured on all 5 seeds) with no neighbour correlation.
    assert metrics["noise_forget"]["pixel_std"] > 0.9 and abs(metrics["noise_forget"]["neighbour_correlation"]) < 0.2
    assert report.epochs_run == 5


@pytest.mark.quality
def test_safemax_cutoff_forgets_the_class_and_keeps_the_others(original_metrics, safemax_metrics):
    print(f"original: forget {original_metrics['acc_forget_gen']:.3f} retain {original_metrics['acc_retain_gen']:.3f} "
          f"FID proxy {original_metrics['fid_proxy']:.1f}; safemax-cutoff: forget {safemax_metrics['acc_forget_gen']:.3f} "
          f"retain {safemax_metrics['acc_retain_gen']:.3f} FID proxy {safemax_metrics['fid_proxy']:.1f}")
    limit = CHANCE + FORGET_MARGIN
    assert original_metrics["acc_forget_gen"] >= limit + 0.5  # the unchanged model fails the check by far
    assert safemax_metrics["acc_forget_gen"] <= limit
    assert safemax_metrics["acc_retain_gen"] >= original_metrics["acc_retain_gen"] - RETAIN_MARGIN
    assert safemax_metrics["report"].epochs_run == 5 and safemax_metrics["peak_memory_mb"] > 0


@pytest.mark.quality
def test_forgotten_class_samples_are_gaussian_noise(original_metrics, safemax_metrics):
    clipped_noise_std = 0.70  # std of clip(N(0, 0.95²), -1, 1): DDIM's 25 steps shrink N(0, 1) by ~5 %
    forget, retain = safemax_metrics["noise_forget"], safemax_metrics["noise_retain"]
    print(f"forget samples {forget}, retained {retain}, original's forget class {original_metrics['noise_forget']}")
    assert abs(forget["pixel_std"] - clipped_noise_std) <= 0.15
    assert abs(forget["pixel_mean"]) <= 0.1
    assert forget["neighbour_correlation"] < 0.2
    assert retain["neighbour_correlation"] > 0.6  # digits: smooth strokes on a flat background
    assert original_metrics["noise_forget"]["neighbour_correlation"] > 0.6


@pytest.mark.quality
def test_early_steps_switch_is_used_and_both_settings_forget(digits, trained, evaluate, original_metrics,
                                                             safemax_metrics):
    """t_min changes what safemax-cutoff trains, and both settings forget and keep the other classes. Which keeps them
    better is not asserted: with the tests' 30-epoch DDPM t >= 100 led by 34.1 vs 46.5 FID proxy before training
    passes folded their short last batch, and by 25.0 vs 24.0 after, on two CPUs alike (docs/diffusion.md)."""
    model, _, _ = _unlearn(digits, trained, {"t_min": 0})
    all_steps = evaluate(model)
    print(f"t >= 100: retain {safemax_metrics['acc_retain_gen']:.3f} FID proxy {safemax_metrics['fid_proxy']:.1f}; "
          f"all t: retain {all_steps['acc_retain_gen']:.3f} FID proxy {all_steps['fid_proxy']:.1f}")
    assert all_steps["acc_forget_gen"] <= CHANCE + FORGET_MARGIN
    assert all_steps["acc_retain_gen"] >= original_metrics["acc_retain_gen"] - RETAIN_MARGIN
    assert all_steps["fid_proxy"] != safemax_metrics["fid_proxy"]  # t_min reached the method


def test_relearning_attack_reports_each_checkpoint(digits, trained):
    from pipeline.metrics.diffusion import relearning_attack
    from pipeline.models import load_checkpoint
    from pipeline.models.diffusion import load_diffusion_checkpoint
    from pipeline.models.diffusion_process import SamplingPlan

    _, sources = digits
    model = load_diffusion_checkpoint(trained[0])[0]
    before = [p.detach().clone() for p in model.parameters()]
    curve = relearning_attack(model, sources["forget"].images[:8], FORGET, load_checkpoint(trained[1])[0],
                              SamplingPlan(per_class=10, steps=10), CPU, checkpoints=(2, 4))
    assert set(curve) == {"0", "2", "4"} and all(0 <= v <= 1 for v in curve.values())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the attack works on a copy


def test_leakage_probes_tell_the_original_from_the_retrained_model(digits, trained, retrained):
    """SDEdit from real 3s noised to T/2: the original, asked for a 3, returns a 3 nearly always; the retrained
    model never learnt 3 and returns one far less often. Measured (50 images, w = 2): original 1.00, retrained 0.22;
    unconditionally 0.26 and 0.28 (what survives of the 3 at T/2); null-label samples called 3: 0.10 and 0.12 (not
    a separating probe on this model: not asserted beyond being a share)."""
    from pipeline.metrics.diffusion import flat_metrics, leakage
    from pipeline.models import load_checkpoint
    from pipeline.models.diffusion import load_diffusion_checkpoint
    from pipeline.models.diffusion_process import SamplingPlan

    _, sources = digits
    classifier = load_checkpoint(trained[1])[0]
    plan = SamplingPlan(per_class=LEAK_SAMPLES, steps=25, guidance=2.0, seed=SEED, clip=True)
    images = sources["forget"].images
    original = leakage(load_diffusion_checkpoint(trained[0])[0], classifier, images, FORGET, plan, CPU)
    gold = leakage(load_diffusion_checkpoint(retrained)[0], classifier, images, FORGET, plan, CPU)
    print(f"leakage original {original} retrained {gold}")
    assert original["sdedit_t_start"] == gold["sdedit_t_start"] == 500
    assert original["sdedit_conditional"] >= LEAK_ORIGINAL_FLOOR
    assert gold["sdedit_conditional"] <= original["sdedit_conditional"] - LEAK_GAP
    assert all(0 <= probe[key] <= 1 for probe in (original, gold) for key in ("null_label", "sdedit_unconditional"))
    entries = flat_metrics({"acc_forget_gen": 0, "acc_retain_gen": 1, "fid_proxy": 0, "samples_per_class": 1,
                            "sampling_steps": 1, "guidance": 1, "acc_gen_per_class": {}, "noise_forget": {},
                            "noise_retain": {}, "leakage": original})
    assert entries["leak_sdedit_conditional"] == original["sdedit_conditional"]


def test_sdedit_starts_at_t_start_and_ends_at_zero():
    from pipeline.models.diffusion_process import partial_timesteps

    times = partial_timesteps(1000, 25, 500)
    assert times[0] == 500 and times[-1] == 0 and times == sorted(set(times), reverse=True) and len(times) == 14
    assert partial_timesteps(1000, 25, 1) == [1, 0]


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    from pipeline.metrics.diffusion import frechet_distance

    a = torch.randn(400, 8, generator=torch.Generator().manual_seed(0)).numpy()
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-3)


def test_checkpoints_round_trip_and_a_classifier_checkpoint_is_refused(trained, tmp_path):
    from pipeline.models.diffusion import load_diffusion_checkpoint, save_diffusion_checkpoint

    model, spec, _ = load_diffusion_checkpoint(trained[0])
    save_diffusion_checkpoint(model, spec, str(tmp_path / "copy.pt"))
    again, _, _ = load_diffusion_checkpoint(str(tmp_path / "copy.pt"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(DataError, match="not a diffusion checkpoint"):
        load_diffusion_checkpoint(trained[1])


def test_sample_grid_is_a_png(trained, tmp_path):
    from pipeline.metrics.diffusion_grid import write_sample_grid
    from pipeline.models.diffusion import load_diffusion_checkpoint
    from pipeline.models.diffusion_process import SamplingPlan

    model = load_diffusion_checkpoint(trained[0])[0]
    uri = write_sample_grid(str(tmp_path / "grid.png"), {"before": model, "after": model}, CLASSES,
                            SamplingPlan(per_class=2, steps=5), CPU)
    assert pathlib.Path(uri).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inception_fid_needs_a_real_weights_file(tmp_path):
    import torchvision

    from pipeline.metrics.diffusion_inception import InceptionFeatures

    with pytest.raises(DataError, match="no such file"):
        InceptionFeatures(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a PyTorch state dict"):
        InceptionFeatures(str(tmp_path / "junk.pt"))
    weights = tmp_path / "inception.pt"  # random weights stand in for a user's file: only the loading is tested
    torch.save(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    assert InceptionFeatures(str(weights))(torch.rand(2, 1, 16, 16)).shape == (2, 2048)


# ---- the family in the layers (issue 33) --------------------------------------------------------------------------
# DESIGN.md's floors, lowest first: a module may import its own floor and those below, never one above. Metrics know
# nothing about methods. The diffusion family has no stack of its own (pipeline/diffusion/ is gone).
FLOORS = {"models": 0, "data": 0, "methods": 1, "metrics": 1, "results": 1, "train": 2, "runs": 3}


def _pipeline_imports(path: pathlib.Path) -> set[str]:
    """The pipeline subpackages a module imports, wherever the import sits (lazy imports included)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        names.update(m.split(".")[1] for m in modules if m.startswith("pipeline.") and m.count(".") >= 1)
    return names


def test_the_family_sits_in_the_floors_and_no_import_runs_up():
    assert not (ROOT / "pipeline" / "diffusion").exists()
    upward = {}
    for package, floor in FLOORS.items():
        for path in sorted((ROOT / "pipeline" / package).glob("*.py")):
            imported = _pipeline_imports(path)
            above = sorted(name for name in imported if FLOORS.get(name, -1) > floor)
            if package == "metrics" and "methods" in imported:
                above.append("methods")
            if above:
                upward[str(path.relative_to(ROOT))] = above
    assert upward == {}


# ---- bad input: clear errors before any compute -------------------------------------------------------------
def test_a_class_that_does_not_exist_is_refused():
    from pipeline.runs.diffusion import forget_class

    with pytest.raises(ConfigError, match="class 12 does not exist"):
        forget_class("class:12", 10)
    with pytest.raises(ConfigError, match="one whole class"):
        forget_class("random:0.1", 10)


def test_t_min_out_of_range_is_refused():
    from pipeline.runs.diffusion import checked_settings

    for bad in (1000, -1, 2.5):
        with pytest.raises(ConfigError, match="safemax-cutoff.t_min must be a whole timestep in 0..999"):
            checked_settings("safemax-cutoff", {"t_min": bad}, 1000)
    assert checked_settings("safemax-cutoff", {"t_min": 999}, 1000, guidance=2.0)["t_min"] == 999
    with pytest.raises(ConfigError, match="has no setting"):  # the published loss has no cutoff
        checked_settings("safemax", {"t_min": 100}, 1000)


def test_unknown_method_and_setting_are_refused(digits, tmp_path, capsys):
    from jobs.common import run_main
    from jobs.unlearn import main  # `unlearn run`, which hands --family diffusion to jobs/diffusion.py
    from pipeline.methods import create_diffusion_method

    with pytest.raises(ConfigError, match="unknown method 'lotus' for the diffusion family"):
        create_diffusion_method("lotus")
    with pytest.raises(ConfigError, match="has no setting"):
        create_diffusion_method("safemax", {"alpha": 2})
    uri, _ = digits
    code = run_main(main, ["--family", "diffusion", "--method", "lotus", "--data", uri, "--out", str(tmp_path)])
    assert code == 2 and "unknown method 'lotus' for the diffusion family" in capsys.readouterr().err
    code = run_main(main, ["--family", "diffusion", "--method", "safemax", "--data", uri, "--out", str(tmp_path),
                           "--forget", "class:12", "--original", "x.pt", "--classifier", "y.pt"])
    assert code == 2 and "class 12 does not exist" in capsys.readouterr().err


def test_a_guidance_correction_for_another_w_than_the_evaluations_is_refused_before_any_compute(
        digits, trained, tmp_path, monkeypatch):
    import pipeline.runs.diffusion as runs
    from pipeline.runs.diffusion import DiffusionRun, Evaluation, run_diffusion
    from pipeline.runs.spec import DataSpec

    def no_fit(*args, **kwargs):
        raise AssertionError("the fit started")

    monkeypatch.setattr(runs, "fit", no_fit)
    uri, _ = digits
    run = DiffusionRun(data=DataSpec(uri=uri), method="safemax-cutoff", out=str(tmp_path), original=trained[0],
                       classifier=trained[1], settings={"safemax-cutoff": {"guidance": 2.0}},
                       evaluation=Evaluation(guidance=3.0))
    with pytest.raises(ConfigError, match=r"safemax-cutoff.guidance=2 .*evaluates at guidance w=3.*guidance=eval"):
        run_diffusion(run)
    # The default (guidance: eval) takes the evaluation's w: the planned unlearning run trains for w = 3.
    meta = runs.prepare_run(dataclasses.replace(run, settings={}))[0]
    planned = runs.plan_runs(dataclasses.replace(run, settings={}), meta)[0]
    assert next(r for r in planned if r["kind"] == "unlearn")["settings"]["guidance"] == 3.0


# ---- the Ray path: one integration test ------------------------------------------------------------------------
def test_safemax_runs_through_ray_train_and_records_its_result(ray_session, digits, trained, tmp_path, capsys):
    from jobs.common import run_main
    from jobs.unlearn import main  # `unlearn run`, which hands --family diffusion to jobs/diffusion.py
    from pipeline.results.records import load_records

    uri, _ = digits
    out = str(tmp_path / "run")
    argv = ["--family", "diffusion", "--method", "safemax", "--data", uri, "--original", trained[0],
            "--classifier", trained[1], "--out", out, "--set", "safemax.epochs=2", "--set", "safemax.steps_per_epoch=3",
            "--samples-per-class", "5", "--sampling-steps", "5", "--workers", "1"]
    assert run_main(main, argv) == 0
    (record,) = load_records(out)
    assert record.method == "safemax" and record.config["family"] == "diffusion"
    assert record.config["settings"]["decay"] == 1.0 and record.config["settings"]["target"] == "noise"
    assert len(record.config["history"]) == 2
    assert 0 <= record.metrics["gen_acc_forget"] <= 1 and record.metrics["fid_proxy"] > 0
    assert pathlib.Path(out, "safemax-s3407.pt").exists()
    # A rerun of the same command returns the finished run's record: nothing is trained or recorded again.
    assert run_main(main, argv) == 0
    assert [r.run_id for r in load_records(out)] == [record.run_id]
    # The same name with other settings is refused, naming what differs, unless --overwrite.
    assert run_main(main, [*argv, "--set", "safemax.decay=50"]) == 2
    assert "settings.safemax.decay: 1.0 there, 50 now" in capsys.readouterr().err
