"""Run a command on another CPU's arithmetic: `python -m tests.cpu_profile {other|avx2|baseline|native} -- CMD ...`.

torch picks three sets of CPU kernels by what the CPU offers, each on its own: its own vectorised operators
(ATEN_CPU_CAPABILITY), oneDNN's convolutions (ONEDNN_MAX_CPU_ISA) and MKL's matrix products
(MKL_ENABLE_INSTRUCTIONS). Each gives slightly different floating-point results, which a trained model carries
far: a quality test whose margin was measured on one CPU failed on an AVX2-only AMD EPYC, and setting
ATEN_CPU_CAPABILITY alone did not reproduce it, because oneDNN and MKL still ran their AVX-512 kernels. A
profile caps all three, so an AVX-512 machine computes as an AVX2-only one would.

`other` is the profile this machine does not run by itself: `avx2` on an AVX-512 machine, else `baseline`
(no vector instructions beyond SSE4). `make test-other-cpu` runs the quality tests under it.
"""

from __future__ import annotations

import os
import sys

PROFILES = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                 "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def native_capability() -> str:
    """What torch's own kernels use here when nothing caps them ("AVX512", "AVX2", "DEFAULT", ...)."""
    import subprocess

    clean = {key: value for key, value in os.environ.items() if key not in PROFILES["avx2"]}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", probe], env=clean, capture_output=True, text=True,
                          check=True).stdout.strip()


def resolve(name: str) -> str:
    if name != "other":
        return name
    return "avx2" if native_capability().startswith("AVX512") else "baseline"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or (argv[0] not in PROFILES and argv[0] != "other"):
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    profile = resolve(argv[0])
    print(f"CPU profile {profile}: {PROFILES[profile] or 'nothing capped'}", flush=True)
    os.execvpe(argv[2], argv[2:], {**os.environ, **PROFILES[profile]})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
