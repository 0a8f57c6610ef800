"""Which Ray a job runs on, chosen before Ray starts and said in one line when it has (issue 34).

In order: `--address`, else `RAY_ADDRESS` (which `ray job submit` sets for its jobs), else a local Ray of the job's
own on this machine. The values are Ray's: `local` (a new Ray of the job's own), `auto` (the Ray that `ray start`
started on this node), `HOST:PORT` (a head node's GCS, 6379 by default) or `ray://HOST:PORT` (Ray Client).

Without either, a job does not join a Ray it finds on the node by itself, as a bare `ray.init()` would: the last
`ray start` on a machine may be a colleague's, or a test's cluster that shares /tmp/ray. It says so instead, with
the flag that joins it. `auto` is resolved here, from the address file `ray start` writes, and only to a GCS that
answers: Ray's own `auto` falls back to any Ray process it finds running, which on a shared machine is anyone's.

Standard library only: the command line imports this before torch and Ray.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from dataclasses import dataclass

from pipeline.errors import ConfigError

ADDRESS_ENV = "RAY_ADDRESS"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set in the driver of a job that `ray job submit` started
LOCAL, AUTO = "local", "auto"
# HOST:PORT, or ray://HOST:PORT; HOST a name, IPv4, or [IPv6].
ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
ADDRESS_HELP = ("the Ray to run on: local (a new Ray of this job's own on this machine), auto (the Ray that "
                "`ray start` started on this node), HOST:PORT of a head node (6379 by default) or ray://HOST:10001 "
                "(Ray Client). Default: $RAY_ADDRESS (set by `ray job submit`), else local")


def check_address(value: str) -> str:
    """An --address / RAY_ADDRESS value, refused unless it is one Ray understands; as argparse's `type`."""
    value = value.strip()
    if value in (LOCAL, AUTO) or ADDRESS.match(value):
        return value
    if value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{value!r} is a dashboard / job-server URL (ray job submit --address takes that); a job joins a "
            "cluster at HOST:6379 or ray://HOST:10001, or with `ray job submit` (which sets RAY_ADDRESS)")
    raise argparse.ArgumentTypeError(f"{value!r} is not local, auto, HOST:PORT or ray://HOST:PORT")


def add_address_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", type=check_address, metavar="ADDRESS", help=ADDRESS_HELP)


_SOURCE_ENV = "UNLEARN_RAY_ADDRESS_SOURCE"  # "--address" when the flag set RAY_ADDRESS (for the start-up line)


def use_address(flag: str | None) -> None:
    """Export --address as RAY_ADDRESS before Ray starts, so this driver and every process it starts (Tune trials,
    `python -m` subprocesses) agree; remembered as given by the flag for the start-up line."""
    if flag:
        os.environ[ADDRESS_ENV] = flag
        os.environ[_SOURCE_ENV] = "--address"


@dataclass(frozen=True)
class RayChoice:
    """The Ray a job will use: `address` to join (None: start a local one) and where that came from."""

    address: str | None
    source: str  # "--address", "RAY_ADDRESS", "RAY_ADDRESS from ray job submit" or "default"
    asked: str = LOCAL  # the value as given: local, auto or an address
    node_ray: str | None = None  # a live Ray `ray start` started on this node, if any (said when not joined)


def node_address_file(environ=os.environ) -> str:
    """Where `ray start` records its GCS address (Ray's own rule: $RAY_TMPDIR, else $TMPDIR on Linux, else /tmp)."""
    base = environ.get("RAY_TMPDIR") or (environ.get("TMPDIR") if sys.platform.startswith("linux") else None) \
        or "/tmp"
    return os.path.join(base, "ray", "ray_current_cluster")


def node_ray(environ=os.environ, timeout_s: float = 1.0) -> str | None:
    """The GCS address `ray start` last recorded on this node, if something answers there (`ray stop` removes the
    file, a crash leaves it behind)."""
    try:
        with open(node_address_file(environ)) as f:
            address = f.read().strip()
    except OSError:
        return None
    match = ADDRESS.match(address)
    if not match:
        return None
    try:
        with socket.create_connection((match.group(2).strip("[]"), int(match.group(3))), timeout=timeout_s):
            return address
    except OSError:
        return None


def choose(environ=os.environ) -> RayChoice:
    """The Ray this process will use, from RAY_ADDRESS (which --address sets) or the default."""
    given = environ.get(ADDRESS_ENV, "").strip()
    if not given:
        source = "default"
    elif environ.get(_SOURCE_ENV) == "--address":
        source = "--address"
    else:
        # A `ray job submit` driver: the job supervisor sets RAY_ADDRESS to the cluster's GCS beside its job config.
        source = f"{ADDRESS_ENV} from ray job submit" if environ.get(JOB_CONFIG_ENV) else ADDRESS_ENV
    flag = "--address" if source == "--address" else ADDRESS_ENV
    if given:
        try:
            check_address(given)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
    if not given or given == LOCAL:
        return RayChoice(None, source, LOCAL, node_ray(environ))
    if given == AUTO:
        found = node_ray(environ)
        if found is None:
            raise ConfigError(f"{flag} auto: no Ray is running on this node (no live address in "
                              f"{node_address_file(environ)}, which `ray start` writes); start one with "
                              "`ray start --head` (or join a cluster's head with `ray start --address HEAD:6379`), "
                              "or give the head's HOST:6379")
        return RayChoice(found, source, AUTO)
    return RayChoice(given, source, given)


def started_line(choice: RayChoice, resources: dict, nodes: int) -> str:
    """The start-up line: which Ray this job uses, with what it holds."""
    held = f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    if choice.address is None:
        why = "--address local" if choice.source == "--address" else f"{ADDRESS_ENV}=local" \
            if choice.source == ADDRESS_ENV else "no --address or RAY_ADDRESS"
        line = f"Ray: started a local Ray of this job's own on this machine ({held}; {why})"
        if choice.node_ray:
            line += (f". A Ray started with `ray start` runs on this node at {choice.node_ray}: "
                     "--address auto runs the job there")
        return line
    where = "the Ray started on this node" if choice.asked == AUTO else "the cluster"
    return (f"Ray: joined {where} at {choice.address} ({choice.source}{' auto' if choice.asked == AUTO else ''}): "
            f"{held} on {nodes} node(s)")
