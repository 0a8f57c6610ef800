"""Every method at its shipped defaults, at three forget settings: a random 10 %, a random 30 % and one class.

Each (method, setting) keeps Acc_r and Acc_test within a measured tolerance of the original's, so a model that
collapsed fails here whatever its Acc_f; and where the method forgets on every original measured, it forgets by
a measured margin (samples flipped out of |D_f|, or the true-class confidence on D_f, 0.995 on the original)
that the original fails by a clear distance. The figures in the comments are min..max over originals 0-2
(`python -m benchmarks.method_margins`; D_f: 80 samples at random 10 %, 239 at random 30 %, 81 for class 3,
whose "test" is the other classes' test images); each margin is about half the smallest forgetting seen, and
each tolerance the largest drop seen plus 0.03.
"""

import pytest

from tests.conftest import FORGET_CLASS
from tests.methods.helpers import Margin, check_defaults

R10, R30, CLASS = "random:0.1", "random:0.3", f"class:{FORGET_CLASS}"
FIXTURES = {R10: "digits_hard", R30: "digits_hard_30", CLASS: "digits_hard_class"}

MARGINS = {
    "retrain": {
        # Trained from scratch on D_r: D_f becomes unseen data. Flipped 20 / 70 / 81 on every original.
        R10: Margin(test_drop=0.08, flipped=10),  # test -0.05..+0.01
        R30: Margin(test_drop=0.08, flipped=35),  # test -0.05..+0.02
        CLASS: Margin(test_drop=0.03, flipped=60),  # other classes +0.02..+0.07
    },
    "finetune": {
        # Adam lr 3e-3, 3 epochs (pipeline/methods/finetune.py; the old SGD defaults flipped 0 everywhere).
        R10: Margin(test_drop=0.09, flipped=5),  # flipped 10-13, test -0.05..-0.01
        R30: Margin(test_drop=0.12, flipped=18),  # flipped 36-38, test -0.09..-0.01
        CLASS: Margin(test_drop=0.04, flipped=60),  # flipped 81, other classes -0.01..+0.02
    },
    "neggrad": {
        R10: Margin(test_drop=0.05, confidence=0.975),  # flipped 2-3, confidence 0.93-0.96, test -0.02..+0.01
        R30: Margin(test_drop=0.04),  # forgets nothing: flipped 0, confidence 0.99, test -0.01..+0.00
        CLASS: Margin(test_drop=0.09, flipped=60),  # flipped 81, other classes -0.06..-0.03
    },
    "npo": {
        R10: Margin(test_drop=0.05, confidence=0.975),  # flipped 2-3, confidence 0.93-0.96, test -0.02..+0.01
        R30: Margin(test_drop=0.04),  # forgets nothing: flipped 0, confidence 0.99, test -0.01..+0.00
        CLASS: Margin(test_drop=0.03, flipped=60),  # flipped 81, other classes +0.01..+0.02
    },
    "randlabel": {
        R10: Margin(test_drop=0.11, flipped=2, confidence=0.78),  # flipped 3-5, conf 0.69-0.73, test -0.08..-0.05
        # Wrong labels on 30 % of a memorised set mislead test samples of every class: test -0.21..-0.18.
        R30: Margin(test_drop=0.24, retain_drop=0.05, flipped=12, confidence=0.58),  # flipped 23-27, conf 0.48-0.53
        CLASS: Margin(test_drop=0.08, flipped=60),  # flipped 79-81, other classes -0.05..-0.02
    },
    "badteacher": {
        # On a random set the incompetent teacher's pull on D_f leaks to every class.
        R10: Margin(test_drop=0.13, retain_drop=0.04, confidence=0.93),  # flipped 1-8, conf 0.79-0.88, test -0.10..-0.06
        R30: Margin(test_drop=0.21, retain_drop=0.06, flipped=3, confidence=0.90),  # flipped 6-14, conf 0.76-0.85, test -0.18..-0.11
        CLASS: Margin(test_drop=0.07, flipped=20, confidence=0.37),  # flipped 40-62, conf 0.19-0.32, others -0.04..-0.01
    },
    "ssd": {
        # SSD dampens weights far more important to D_f than to D, which a class has and a random set has not.
        R10: Margin(test_drop=0.03),  # flipped 0, test -0.00..+0.02
        R30: Margin(test_drop=0.03),  # flipped 0, test +0.00..+0.02
        CLASS: Margin(test_drop=0.05, flipped=60, confidence=0.15),  # flipped 81, conf 0.03-0.10, others -0.02..+0.02
    },
    "unsir": {
        R10: Margin(test_drop=0.07, retain_drop=0.05, flipped=2, confidence=0.69),  # flipped 3-6, conf 0.58-0.64, test -0.04..+0.01
        R30: Margin(test_drop=0.07, retain_drop=0.03, flipped=2, confidence=0.74),  # flipped 4-13, conf 0.59-0.69, test -0.04..+0.02
        CLASS: Margin(test_drop=0.07, flipped=14, confidence=0.46),  # flipped 28-50, conf 0.24-0.41, others -0.04..-0.01
    },
    "salun": {
        R10: Margin(test_drop=0.12, confidence=0.975),  # flipped 0-3, conf 0.88-0.96, test -0.09..-0.04
        R30: Margin(test_drop=0.15),  # flipped 0-7, conf 0.87-0.97 (none on one original), test -0.11..-0.06
        CLASS: Margin(test_drop=0.04, flipped=5, confidence=0.69),  # flipped 11-34, conf 0.46-0.64, others -0.01..+0.00
    },
    "jit": {
        # Forgets nothing anywhere (flipped 0, confidence 0.96-0.99): a property of the published method
        # (test_jit.py keeps it as a strict expected failure); what it costs is held here.
        R10: Margin(test_drop=0.08),  # test -0.05..-0.02
        R30: Margin(test_drop=0.12),  # test -0.09..-0.05
        CLASS: Margin(test_drop=0.11),  # other classes -0.08..-0.06
    },
    "scrub": {
        R10: Margin(test_drop=0.07, flipped=4, confidence=0.85),  # flipped 8-12, conf 0.71-0.80, test -0.04..-0.02
        # SCRUB's max-steps on 239 memorised samples collapse the model at every rate tried (lr 5e-3: Acc_r
        # -0.90..-0.87, test -0.70..-0.63; 4e-3, 2e-3, 1e-3, 5e-4 and msteps 1 too: test -0.66..-0.14). Kept as a
        # strict expected failure (below) and flagged by the benchmark; the README says so.
        R30: Margin(test_drop=0.10, retain_drop=0.05),
        CLASS: Margin(test_drop=0.05, flipped=60, confidence=0.05),  # class_lr 1e-3: flipped 81, conf 0.00, others -0.02..+0.00
    },
    "lotus": {
        # lr 1e-4 (the paper's): see the README for 3e-4. On a random set LoTUS makes D_f look unseen (true-class
        # confidence at the original's unseen level, 0.63-0.67) rather than flipping its argmax.
        R10: Margin(test_drop=0.12, confidence=0.73),  # flipped 0, conf 0.64-0.68, test -0.09..-0.07
        R30: Margin(test_drop=0.18, retain_drop=0.04, confidence=0.70),  # flipped 1-6, conf 0.62-0.65, test -0.15..-0.12
        CLASS: Margin(test_drop=0.06, flipped=60, confidence=0.12),  # flipped 74-75, conf 0.06-0.07, others -0.02
    },
}


KNOWN_FAILURES = {("scrub", R30): "SCRUB's defaults collapse the model at a random 30 % (README)"}


pytestmark = pytest.mark.usefixtures("single_thread")  # as measured (tests/methods/conftest.py)


@pytest.mark.parametrize("name, setting", [
    pytest.param(name, setting, marks=[pytest.mark.xfail(strict=True, raises=AssertionError,
                                                          reason=KNOWN_FAILURES[(name, setting)])]
                 if (name, setting) in KNOWN_FAILURES else [])
    for name, margins in MARGINS.items() for setting in margins])
def test_defaults_keep_what_they_should_and_forget_by_their_margin(name, setting, original_model, request):
    sources = request.getfixturevalue(FIXTURES[setting])
    sources = sources[0] if isinstance(sources, tuple) else sources
    forget_classes = (FORGET_CLASS,) if setting == CLASS else ()
    check_defaults(name, original_model, sources, MARGINS[name][setting], forget_classes=forget_classes)


def test_every_method_is_tested_at_every_setting():
    from pipeline.methods import REGISTRY

    assert set(MARGINS) == set(REGISTRY) - {"original"}
    assert all(set(margins) == set(FIXTURES) for margins in MARGINS.values())


def test_unlearn_methods_shows_the_limits_and_the_extensions(capsys):
    from jobs import methods

    assert methods.main([]) == 0
    printed = capsys.readouterr().out
    jit = printed[printed.index("\njit "):printed.index("\nnpo ")]
    assert "note: does not forget memorised samples on digits-hard (property of the published method)" in jit
    extensions = printed[printed.index("Not in the papers"):]
    assert "batchnorm_refresh_batches: after every epoch" in extensions and "0 = the papers' exact loop" in extensions
    assert "scrub.class_lr:" in extensions
    assert "batchnorm_refresh_batches=50" in printed and "class_lr=0.001" in printed
