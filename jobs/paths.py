"""Every local path a user types, made absolute once, at the job's edge (DESIGN §2).

Ray Train workers, Tune trials and Ray tasks run in folders of their own, so a relative path that reaches them names
another place than the one the user meant (issue 34: a relative `forget --out` wrote the model under Ray's session
folder, then the driver stopped after all the compute). Records and audit chains also store the paths they were
given, and a relative one only works from the folder it was typed in. URIs (s3://, http://, file://...) stay as
they are. Only the standard library here: jobs import this before their heavy parts.
"""

from __future__ import annotations

import argparse
import os
import re

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Specs whose argument after the prefix is a path: `--forget ids:FILE`, `--source imagefolder:PATH`.
PATH_SPECS = ("ids:", "imagefolder:")


def absolute(value: str | None) -> str | None:
    """A local path made absolute from the current folder (~ expanded); a URI, None or "" as it is."""
    if not value or URI.match(str(value)):
        return value
    return os.path.abspath(os.path.expanduser(str(value)))


def absolute_spec(value: str | None) -> str | None:
    """`ids:FILE` / `imagefolder:PATH` with the path made absolute; any other spec (random:0.1, digits) as it is."""
    for prefix in PATH_SPECS:
        if value and value.startswith(prefix) and len(value) > len(prefix):
            return prefix + absolute(value[len(prefix):])
    return value


def absolute_args(args: argparse.Namespace, paths: tuple[str, ...] = (), specs: tuple[str, ...] = ()
                  ) -> argparse.Namespace:
    """The parsed flags named in `paths` (a path, or a list of paths) and `specs` (a spec that may hold a path)
    made absolute in place; flags a parser does not have are skipped. Returns `args`."""
    for name in paths:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, [absolute(item) for item in value])
        elif value is not None:
            setattr(args, name, absolute(value))
    for name in specs:
        if getattr(args, name, None) is not None:
            setattr(args, name, absolute_spec(getattr(args, name)))
    return args
