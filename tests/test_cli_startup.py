"""`--help` and flag errors answer before torch or Ray is imported (issue 34: `unlearn run --help` took 9 s on 2
cores, all of it imports). Not timed: each case runs in a fresh interpreter, and the check is that torch and ray
are absent from sys.modules after it; benchmarks/cli_startup.py gives the seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from jobs.cli import COMMANDS, _available

HEAVY = ("torch", "ray")

# A flag error per subcommand that needs no file, with the words the user must see. Required flags are given
# (their values are never read: the error comes first).
FLAG_ERRORS = {
    "prepare": (["--source", "digits", "--out", "x", "--procs", "0"], "--procs must be 1 or more"),
    "train": (["--data", "d", "--out", "o", "--workers", "0"], "--workers must be at least 1"),
    "run": (["--data", "d", "--original", "m", "--method", "lotuss", "--out", "o"], "unknown method 'lotuss'"),
    "forget": (["--data", "d", "--model", "m", "--ids", "i", "--out", "o", "--cpus-per-worker", "0"],
               "--cpus-per-worker must be above 0"),
    "audit": (["c", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    "eval": (["--data", "d", "--model", "m", "--out", "o", "--data-mode", "fast"], "invalid choice: 'fast'"),
    "audit-mia": (["--data", "d", "--model", "m", "--method", "nosuch", "--bank", "b", "--out", "o"],
                  "unknown method 'nosuch'"),
    "methods": (["--no-such-flag"], "unrecognized arguments"),
    "validate-rfjsd": (["--run", "r", "--floor-draws", "-1"], "--floor-draws must be 0 or more"),
    "sweep": (["--data", "d", "--original", "m", "--methods", "lotus", "--out", "o", "--trials", "0"],
              "--trials must be at least 1"),
    "report": (["r", "--no-such-flag"], "unrecognized arguments"),
    "bench": (["--config", "c", "--seeds", "x"], "invalid int value: 'x'"),
    "bench-ingest": (["--data", "d", "--passes", "0"], "--passes and --workers must be at least 1"),
    "demo": (["--workers", "0"], "--workers must be at least 1"),
    "ids": (["--data", "d", "--split", "nosuch"], "invalid choice: 'nosuch'"),
    "convert-weights": (["--weights", "w", "--model", "cnn", "--out", "o", "--num-classes", "0", "--image-size",
                         "32", "--mean", "0.5", "--std", "0.25"], "--num-classes must be at least 2"),
}

# Runs every case in one interpreter, in order, and notes after each which heavy modules are loaded: the first
# case that loads one is the one to blame.
RUNNER = textwrap.dedent("""
    import contextlib, io, json, sys
    from jobs.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
        results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue(),
                        "heavy": [name for name in %r if name in sys.modules]})
    print(json.dumps(results))
""" % (HEAVY,))


def run_cases(cases: list[list[str]]) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def commands() -> list[str]:
    return [name for name in COMMANDS if _available(name)]


def test_every_subcommand_has_a_flag_error_case():
    assert sorted(commands()) == sorted(FLAG_ERRORS)


def test_help_of_every_subcommand_imports_neither_torch_nor_ray():
    cases = [[name, "--help"] for name in commands()]
    cases += [["run", "--family", "diffusion", "--help"], ["sweep", "--resume", "r", "--help"], ["--help"]]
    for result in run_cases(cases):
        assert result["code"] == 0, result
        assert "usage:" in result["out"], result
        assert result["heavy"] == [], f"{result['argv']} imported {result['heavy']}"


def test_flag_errors_exit_2_with_their_message_before_torch_or_ray():
    names = commands()
    results = run_cases([[name, *FLAG_ERRORS[name][0]] for name in names])
    for name, result in zip(names, results):
        assert result["code"] == 2, result
        assert FLAG_ERRORS[name][1] in result["err"], result
        assert "Traceback" not in result["err"], result
        assert result["heavy"] == [], f"{result['argv']} imported {result['heavy']}"


@pytest.mark.parametrize("module", sorted({module for module, _ in COMMANDS.values()}))
def test_importing_a_job_module_and_building_its_parser_imports_neither_torch_nor_ray(module):
    code = (f"import sys, importlib; job = importlib.import_module({module!r}); "
            "getattr(job, 'parser', lambda: None)(); "
            f"print([name for name in {HEAVY!r} if name in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing {module} imported {done.stdout.strip()}"
