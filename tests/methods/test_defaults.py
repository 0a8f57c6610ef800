"""Every method at its shipped defaults, at three forget settings: a random 10 %, a random 30 % and one class.

Each (method, setting) keeps Acc_r and Acc_test within a measured tolerance of the original's, so a model that
collapsed fails here whatever its Acc_f; and where the method forgets on every original measured, it forgets by
a measured margin (samples flipped out of |D_f|, or the true-class confidence on D_f, 0.995 on the original)
that the original fails by a clear distance.

The figures in the comments are min..max over the runs of `python -m benchmarks.method_margins` on two CPUs'
arithmetic (tests/cpu_profile.py): originals 0-2 natively on an AVX-512 machine and originals 0 and 2 (plus 1 at
random 10 %) under the `avx2` profile, i.e. 5-6 runs per setting (D_f: 80 samples at random 10 %, 239 at
random 30 %, 81 for class 3, whose "test" is the other classes' test images). Each tolerance is the largest drop
seen plus 0.03 (Acc_r: plus 0.02, at least 0.02). Each forgetting margin stays as it was where every run clears
it with room (a quarter more flips, or 0.03 of confidence), else it is half the smallest forgetting seen. Two
margins set from one machine before had failed on an AVX2-only CPU (finetune at class 3: test -0.045 against
0.04; randlabel at random 10 %: 1 flip where 2 were asked); both runs are in these ranges now.
"""

import pytest

from tests.conftest import FORGET_CLASS
from tests.methods.helpers import Margin, check_defaults

R10, R30, CLASS = "random:0.1", "random:0.3", f"class:{FORGET_CLASS}"
FIXTURES = {R10: "digits_hard", R30: "digits_hard_30", CLASS: "digits_hard_class"}

MARGINS = {
    "retrain": {
        # Trained from scratch on D_r: D_f becomes unseen data. Flipped 23 / 70-75 / 81 on every original.
        R10: Margin(test_drop=0.10, flipped=10, confidence=0.81),  # flipped 23, conf 0.61, test -0.07..+0.04
        R30: Margin(test_drop=0.12, flipped=35, confidence=0.79),  # flipped 70-75, conf 0.56-0.57, test -0.08..+0.02
        CLASS: Margin(test_drop=0.06, flipped=60, confidence=0.50),  # flipped 81, conf 0.00, test -0.03..+0.06
    },
    "finetune": {
        # Adam lr 3e-3, 3 epochs (pipeline/methods/finetune.py; the old SGD defaults flipped 0 everywhere).
        R10: Margin(test_drop=0.08, flipped=3, confidence=0.91),  # flipped 6-14, conf 0.76-0.82, test -0.05..+0.04
        R30: Margin(test_drop=0.12, retain_drop=0.03, flipped=18, confidence=0.88),  # flipped 28-36, conf 0.73-0.76, test -0.08..+0.00, retain -0.01..+0.00
        CLASS: Margin(test_drop=0.10, retain_drop=0.03, flipped=60, confidence=0.50),  # flipped 81, conf 0.00, test -0.07..+0.03, retain -0.00..+0.00
    },
    "neggrad": {
        R10: Margin(test_drop=0.07),  # flipped 2-5, conf 0.91-0.95, test -0.04..+0.01
        R30: Margin(test_drop=0.06),  # flipped 0-1, conf 0.99, test -0.03..+0.02
        CLASS: Margin(test_drop=0.10, flipped=60, confidence=0.50),  # flipped 81, conf 0.00, test -0.06..-0.04
    },
    "npo": {
        R10: Margin(test_drop=0.07),  # flipped 1-5, conf 0.92-0.95, test -0.04..+0.02
        R30: Margin(test_drop=0.06),  # flipped 0-1, conf 0.99, test -0.03..+0.02
        CLASS: Margin(test_drop=0.04, flipped=60, confidence=0.51),  # flipped 81, conf 0.01, test -0.00..+0.02
    },
    "randlabel": {
        R10: Margin(test_drop=0.14, retain_drop=0.03, confidence=0.78),  # flipped 1-5, conf 0.68-0.73, test -0.11..-0.04, retain -0.00..+0.00
        # Wrong labels on 30 % of a memorised set mislead test samples of every class: test -0.24..-0.14.
        R30: Margin(test_drop=0.27, retain_drop=0.06, flipped=12, confidence=0.58),  # flipped 21-26, conf 0.49-0.53, test -0.24..-0.14, retain -0.03..-0.02
        CLASS: Margin(test_drop=0.08, flipped=60, confidence=0.51),  # flipped 79-81, conf 0.02, test -0.05..-0.01
    },
    "badteacher": {
        # On a random set the incompetent teacher's pull on D_f leaks to every class.
        R10: Margin(test_drop=0.16, retain_drop=0.04, confidence=0.93),  # flipped 2-7, conf 0.79-0.88, test -0.12..-0.06, retain -0.02..-0.00
        R30: Margin(test_drop=0.22, retain_drop=0.07, flipped=3, confidence=0.90),  # flipped 5-21, conf 0.74-0.86, test -0.19..-0.13, retain -0.05..-0.02
        CLASS: Margin(test_drop=0.11, flipped=20, confidence=0.69),  # flipped 38-56, conf 0.21-0.37, test -0.08..-0.01
    },
    "ssd": {
        # SSD dampens weights far more important to D_f than to D, which a class has and a random set has not.
        R10: Margin(test_drop=0.04),  # flipped 0, conf 1.00, test -0.01..+0.02
        R30: Margin(test_drop=0.05),  # flipped 0, conf 1.00, test -0.01..+0.02
        CLASS: Margin(test_drop=0.05, flipped=27, confidence=0.62),  # flipped 55-81, conf 0.03-0.24, test -0.02..+0.04
    },
    "unsir": {
        R10: Margin(test_drop=0.08, retain_drop=0.04, confidence=0.84),  # flipped 2-6, conf 0.59-0.68, test -0.05..+0.05, retain -0.02..-0.00
        R30: Margin(test_drop=0.08, retain_drop=0.05, flipped=2, confidence=0.74),  # flipped 4-16, conf 0.57-0.70, test -0.05..+0.02, retain -0.02..-0.01
        CLASS: Margin(test_drop=0.10, retain_drop=0.04, flipped=14, confidence=0.72),  # flipped 24-46, conf 0.27-0.43, test -0.06..-0.01, retain -0.02..-0.00
    },
    "salun": {
        R10: Margin(test_drop=0.12, retain_drop=0.03),  # flipped 0-3, conf 0.88-0.96, test -0.09..-0.05, retain -0.01..+0.00
        R30: Margin(test_drop=0.16, retain_drop=0.05),  # flipped 0-8, conf 0.85-0.98, test -0.13..-0.04, retain -0.02..+0.00
        CLASS: Margin(test_drop=0.06, flipped=3, confidence=0.86),  # flipped 6-30, conf 0.50-0.72, test -0.03..+0.01
    },
    "jit": {
        # Forgets nothing anywhere (flipped 0, confidence 0.96-0.99): a property of the published method
        # (test_jit.py keeps it as a strict expected failure); what it costs is held here.
        R10: Margin(test_drop=0.09),  # flipped 0, conf 0.98-0.99, test -0.06..-0.02
        R30: Margin(test_drop=0.13),  # flipped 0, conf 0.96-0.98, test -0.10..-0.06
        CLASS: Margin(test_drop=0.13),  # flipped 0, conf 0.99, test -0.09..-0.06
    },
    "scrub": {
        R10: Margin(test_drop=0.11, retain_drop=0.03, flipped=4, confidence=0.85),  # flipped 8-18, conf 0.60-0.77, test -0.07..-0.01, retain -0.01..+0.00
        # SCRUB's max-steps on 239 memorised samples collapse the model at every rate tried (lr 5e-3: Acc_r
        # -0.90..-0.87, test -0.70..-0.63; 4e-3, 2e-3, 1e-3, 5e-4 and msteps 1 too: test -0.66..-0.14). Kept as a
        # strict expected failure (below) and flagged by the benchmark; docs/methods.md says so.
        R30: Margin(test_drop=0.10, retain_drop=0.05),  # flipped 207-221, conf 0.10-0.11, test -0.67..-0.61, retain -0.91..-0.72
        CLASS: Margin(test_drop=0.08, flipped=60, confidence=0.05),  # flipped 81, conf 0.00, test -0.04..+0.02
    },
    "lotus": {
        # lr 1e-4 (the paper's): see docs/methods.md for 3e-4. On a random set LoTUS makes D_f look unseen (true-class
        # confidence near the original's unseen level, 0.62-0.73) rather than flipping its argmax.
        R10: Margin(test_drop=0.16, retain_drop=0.04, confidence=0.87),  # flipped 0-5, conf 0.62-0.73, test -0.13..-0.08, retain -0.02..-0.00
        R30: Margin(test_drop=0.20, retain_drop=0.05, confidence=0.85),  # flipped 1-12, conf 0.60-0.70, test -0.16..-0.12, retain -0.03..-0.01
        CLASS: Margin(test_drop=0.10, flipped=36, confidence=0.12),  # flipped 73, conf 0.06-0.07, test -0.06..-0.02
    },
}


KNOWN_FAILURES = {("scrub", R30): "SCRUB's defaults collapse the model at a random 30 % (docs/methods.md)"}


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
