"""Does a job's Ray worker group fit a cluster-launcher file? (`unlearn bench --cluster cluster.yaml`)

A Ray Train worker group that asks for more GPU workers than the cluster can ever start is not refused by Ray: the
autoscaler cannot place it and the job waits, all night (issue 34: the nightly config asked for 8 GPU workers,
cluster.yaml allowed at most 4 single-GPU nodes). This reads the launcher file offline (no AWS, no cluster) and
counts the workers its node types hold at their maximum: the head node once, each worker type up to its
`max_workers`, all worker nodes together up to the file's `max_workers`.

A node type's CPUs and GPUs are its `resources` when given there, else those of its AWS instance type (the table
below, as AWS lists them; Ray counts every vCPU as a CPU). An instance type not in the table needs `resources`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import ConfigError

# (vCPUs, GPUs) of the AWS GPU instance types a Ray Train worker group is likely to run on.
GPU_INSTANCES = {
    **{f"{family}.{size}": shape for family in ("g5", "g6", "g6e") for size, shape in {
        "xlarge": (4, 1), "2xlarge": (8, 1), "4xlarge": (16, 1), "8xlarge": (32, 1), "12xlarge": (48, 4),
        "16xlarge": (64, 1), "24xlarge": (96, 4), "48xlarge": (192, 8)}.items()},
    "g4dn.xlarge": (4, 1), "g4dn.2xlarge": (8, 1), "g4dn.4xlarge": (16, 1), "g4dn.8xlarge": (32, 1),
    "g4dn.12xlarge": (48, 4), "g4dn.16xlarge": (64, 1), "g4dn.metal": (96, 8),
    "p3.2xlarge": (8, 1), "p3.8xlarge": (32, 4), "p3.16xlarge": (64, 8), "p3dn.24xlarge": (96, 8),
    "p4d.24xlarge": (96, 8), "p4de.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
}
# CPU-only families: vCPUs follow the size name.
CPU_FAMILIES = ("m5", "m5a", "m6i", "m6a", "m7i", "m7a", "c5", "c5a", "c6i", "c6a", "c7i", "c7a", "r5", "r6i", "r7i")
CPU_SIZES = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "9xlarge": 36, "12xlarge": 48,
             "16xlarge": 64, "18xlarge": 72, "24xlarge": 96, "32xlarge": 128, "48xlarge": 192}


@dataclass(frozen=True)
class NodeType:
    name: str
    instance: str
    cpus: float
    gpus: float
    max_nodes: int  # 1 for the head

    def holds(self, cpus: float, gpus: float) -> int:
        """Workers of (cpus, gpus) each that one node of this type holds."""
        by_cpu = math.floor(self.cpus / cpus) if cpus > 0 else math.inf
        by_gpu = math.floor(self.gpus / gpus) if gpus > 0 else math.inf
        return int(min(by_cpu, by_gpu))

    def describe(self) -> str:
        return f"{self.instance} ({self.cpus:g} CPUs, {self.gpus:g} GPU{'s' if self.gpus != 1 else ''})"


def instance_shape(instance: str) -> tuple[float, float] | None:
    if instance in GPU_INSTANCES:
        return GPU_INSTANCES[instance]
    family, _, size = instance.partition(".")
    if family in CPU_FAMILIES and size in CPU_SIZES:
        return CPU_SIZES[size], 0
    return None


def node_type(name: str, spec: dict, max_nodes: int, uri: str) -> NodeType:
    """A launcher node type's CPUs and GPUs: its `resources`, else its instance type's."""
    instance = str((spec.get("node_config") or {}).get("InstanceType", "?"))
    resources = spec.get("resources") or {}
    shape = instance_shape(instance)
    if "CPU" not in resources and shape is None:
        raise ConfigError(f"{uri}: node type {name} runs {instance}, whose CPUs and GPUs this check does not know: "
                          f"give them in its `resources: {{CPU: n, GPU: m}}`")
    # As Ray's AWS provider does: the detected shape, updated with what `resources` gives.
    cpus = float(resources.get("CPU", shape[0] if shape else 0))
    gpus = float(resources.get("GPU", shape[1] if shape else 0))
    return NodeType(name, instance, cpus, gpus, max_nodes)


@dataclass(frozen=True)
class Capacity:
    workers: int  # the most workers of the asked shape the cluster holds at its largest
    lines: tuple[str, ...]  # where they would go, per node type


def capacity(cluster: dict, cpus: float, gpus: float, uri: str = "cluster.yaml") -> Capacity:
    """How many workers of (cpus, gpus) each the launcher file's cluster holds at its largest. Worker nodes share
    the file's `max_workers`; taking the node types that hold the most workers per node first is optimal, since
    every node costs the same one unit of that budget."""
    types = cluster.get("available_node_types") or {}
    head_name = cluster.get("head_node_type")
    if head_name not in types:
        raise ConfigError(f"{uri}: head_node_type {head_name!r} is not one of available_node_types")
    head = node_type(head_name, types[head_name], 1, uri)
    workers = [node_type(name, spec, int(spec.get("max_workers", 0)), uri)
               for name, spec in types.items() if name != head_name]
    budget = int(cluster.get("max_workers", sum(w.max_nodes for w in workers)))
    total, lines = head.holds(cpus, gpus), []
    if total:
        lines.append(f"{head.name} (head): 1 x {head.describe()}, {total} per node")
    for worker in sorted(workers, key=lambda w: w.holds(cpus, gpus), reverse=True):
        per_node, nodes = worker.holds(cpus, gpus), min(worker.max_nodes, budget)
        if per_node and nodes:
            total += per_node * nodes
            budget -= nodes
            lines.append(f"{worker.name}: up to {nodes} x {worker.describe()}, {per_node} per node")
    return Capacity(total, tuple(lines))


def check_fits(workers: int, gpus: bool, cpus_per_worker: float, cluster: dict, config_uri: str,
               cluster_uri: str) -> Capacity:
    """Refuse a worker group the cluster can never place, naming both numbers; return the capacity otherwise."""
    gpu = 1.0 if gpus else 0.0
    room = capacity(cluster, cpus_per_worker, gpu, cluster_uri)
    if workers > room.workers:
        shape = f"{'1 GPU and ' if gpus else ''}{cpus_per_worker:g} CPU{'s' if cpus_per_worker != 1 else ''} each"
        where = "; ".join(room.lines) or "no node type holds even one"
        raise ConfigError(
            f"{config_uri} asks for {workers} Ray Train workers (ray.workers; {shape}), but {cluster_uri} can start "
            f"at most {room.workers}: {where}. Ray would wait for them forever. Lower ray.workers to {room.workers} "
            f"or less, or give the cluster more room (a worker type's max_workers, the file's max_workers "
            f"{cluster.get('max_workers')}, or an instance type with more GPUs per node)")
    return room
