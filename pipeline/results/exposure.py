"""U-LiRA's per-example picture for the report: which forgotten samples stay exposed, per method.

A bench record audited with U-LiRA names its audit's ulira.json in `config["u_lira"]["result"]`
(jobs/bench.py); that file holds every audited sample with its role ("forgotten": the target's D_f, or
"never_seen": val samples) and its attack score (pipeline/runs/audit_mia.py `_samples`). This module reads them
back and derives, per (group, method, variant):

- the forgotten samples the attack is surest about (highest score), with their seed;
- how many forgotten samples score above EVERY never-seen sample of their own audit: the attack names them with
  no false positive among that audit's never-seen samples. That is the per-example sense of "exposed" used here;
  it needs no threshold chosen by hand, and a model that forgot them would put about none there (in an audit of
  n never-seen samples, a forgotten sample that looks never seen lands above all of them with chance 1/(n+1));
- the scores of both roles pooled over seeds, for the histograms (pipeline/results/plots.py).

Scores mean different things per variant: online = log-likelihood ratio "unlearned by the method" over "never
seen" (two-sided: over-unlearning also scores high); offline = standard deviations above the never-seen shadows'
mean (one-sided). Every figure built from this module names its variant.

Reading only: storage and numpy; nothing here imports the run layer (imports point runs → results).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from pipeline import storage
from pipeline.results.aggregate import TABLE_KINDS, order_methods
from pipeline.results.records import ResultRecord

FORGOTTEN, NEVER_SEEN = "forgotten", "never_seen"
SHOWN_EXPOSED = 10  # forgotten samples listed per method, the highest scores first
SCORE_MEANINGS = {"online": "log-likelihood ratio, unlearned vs never seen",
                  "offline": "σ above the never-seen shadows' mean"}


@dataclasses.dataclass(frozen=True)
class Audit:
    """One audit of one method's model in one seed, as its ulira.json tells it."""

    group: tuple[str, str, str]  # (dataset, model, forget spec), as the tables group records
    method: str
    seed: int
    variant: str
    trusted: bool | None  # both sanity anchors passed / one failed / not run
    warnings: tuple[str, ...]
    forgotten: tuple[tuple[str, int, float], ...]  # (sample id, label, score), scored ones only
    never_seen: np.ndarray  # scores of the never-seen samples (scored ones only)

    @property
    def forgotten_scores(self) -> np.ndarray:
        return np.array([score for _, _, score in self.forgotten], dtype=np.float64)

    @property
    def exposed(self) -> int:
        """Forgotten samples scoring above every never-seen sample of this audit."""
        if not len(self.never_seen):
            return 0
        return int((self.forgotten_scores > self.never_seen.max()).sum())


def audit_from(record: ResultRecord, result: dict) -> Audit | None:
    """The audit in `result` (a ulira.json) for `record`; None when the file predates per-sample scores."""
    samples = result.get("samples")
    if not samples:
        return None
    forgotten = tuple((s["sample_id"], int(s["label"]), float(s["score"])) for s in samples
                      if s["role"] == FORGOTTEN and s["score"] is not None)
    never_seen = np.array([s["score"] for s in samples if s["role"] == NEVER_SEEN and s["score"] is not None],
                          dtype=np.float64)
    trusted = result.get("trusted")
    return Audit((record.dataset, record.model, record.forget_spec), record.method, int(record.seed),
                 result["variant"], None if trusted is None else bool(trusted), tuple(result.get("warnings", ())),
                 forgotten, never_seen)


def load_audits(records: list[ResultRecord]) -> tuple[list[Audit], list[str]]:
    """Every U-LiRA audit the reported records point at, and a note for each that cannot be shown (its file is
    gone, it failed, or it predates per-sample scores): the report says what it left out rather than hide it."""
    audits, notes = [], []
    for record in records:
        section = (record.config or {}).get("u_lira")
        if record.kind not in TABLE_KINDS or record.status != "ok" or not isinstance(section, dict):
            continue
        where = f"{record.method}, seed {record.seed}"
        if "error" in section:
            notes.append(f"{where}: the audit failed ({section['error']})")
            continue
        uri = section.get("result")
        if not uri or not storage.exists(uri):
            notes.append(f"{where}: its audit file {uri} is not there any more")
            continue
        audit = audit_from(record, json.loads(storage.read_text(uri)))
        if audit is None:
            notes.append(f"{where}: {uri} holds no per-sample scores (written before they were kept)")
        else:
            audits.append(audit)
    return audits, notes


@dataclasses.dataclass(frozen=True)
class MethodExposure:
    """One method's audits of one group and variant, pooled over seeds."""

    group: tuple[str, str, str]
    method: str
    variant: str
    audits: tuple[Audit, ...]

    @property
    def seeds(self) -> list[int]:
        return sorted(audit.seed for audit in self.audits)

    @property
    def forgotten_count(self) -> int:
        return sum(len(audit.forgotten) for audit in self.audits)

    @property
    def never_seen_count(self) -> int:
        return sum(len(audit.never_seen) for audit in self.audits)

    @property
    def exposed_count(self) -> int:
        return sum(audit.exposed for audit in self.audits)

    @property
    def forgotten_scores(self) -> np.ndarray:
        return np.concatenate([audit.forgotten_scores for audit in self.audits])

    @property
    def never_seen_scores(self) -> np.ndarray:
        return np.concatenate([audit.never_seen for audit in self.audits])

    @property
    def untrusted_seeds(self) -> list[int]:
        return sorted(audit.seed for audit in self.audits if audit.trusted is False)

    @property
    def unchecked_seeds(self) -> list[int]:
        return sorted(audit.seed for audit in self.audits if audit.trusted is None)

    @property
    def warnings(self) -> list[str]:
        return [f"seed {audit.seed}: {warning}" for audit in self.audits for warning in audit.warnings]

    def most_exposed(self, count: int = SHOWN_EXPOSED) -> list[tuple[int, str, int, float]]:
        """(seed, sample id, label, score) of the `count` highest-scoring forgotten samples over all seeds."""
        every = [(audit.seed, sample_id, label, score) for audit in self.audits
                 for sample_id, label, score in audit.forgotten]
        return sorted(every, key=lambda row: (-row[3], row[0], row[1]))[:count]


def method_exposures(audits: list[Audit], method_order: list[str] | None = None) -> list[MethodExposure]:
    """The audits per (group, method, variant): groups sorted, methods in the tables' order."""
    keyed: dict[tuple, list[Audit]] = {}
    for audit in audits:
        keyed.setdefault((audit.group, audit.method, audit.variant), []).append(audit)
    out = []
    for group in sorted({key[0] for key in keyed}):
        methods = order_methods({key[1] for key in keyed if key[0] == group}, method_order)
        for method in methods:
            for variant in sorted(v for g, m, v in keyed if g == group and m == method):
                out.append(MethodExposure(group, method, variant, tuple(sorted(keyed[(group, method, variant)],
                                                                               key=lambda a: a.seed))))
    return out


def score_meaning(variant: str) -> str:
    return SCORE_MEANINGS.get(variant, "attack score")


def score_label(variant: str) -> str:
    """An axis label that names the variant: "log-likelihood ratio, unlearned vs never seen (online)"."""
    return f"{score_meaning(variant)} ({variant})"


def variants_text(exposures: list[MethodExposure]) -> str:
    """"online: log-likelihood ratio, ..." for each variant among `exposures`."""
    return "; ".join(f"{v}: {score_meaning(v)}" for v in sorted({e.variant for e in exposures}))


def exposure_sentence(exposure: MethodExposure) -> str:
    """What the exposure figures say about a method, in words chosen by them."""
    seeds = ", ".join(map(str, exposure.seeds))
    chance = sum(len(a.forgotten) / (len(a.never_seen) + 1) for a in exposure.audits if len(a.never_seen))
    text = (f"{exposure.method} ({exposure.variant}, seed{'s' if len(exposure.seeds) > 1 else ''} {seeds}): "
            f"{exposure.exposed_count} of {exposure.forgotten_count} forgotten samples score above every never-seen "
            f"sample of their audit (about {chance:.1f} expected if they looked never seen)")
    if exposure.untrusted_seeds:
        text += (f"; a sanity anchor FAILED in seed(s) {', '.join(map(str, exposure.untrusted_seeds))}: these "
                 "figures must not be trusted")
    elif exposure.unchecked_seeds:
        text += f"; sanity anchors not run in seed(s) {', '.join(map(str, exposure.unchecked_seeds))}"
    return text


# ---- the exposure table (Markdown and HTML render the same cells) --------------------------------------------

UNTRUSTED_MARK = "†"
EXPOSURE_HEADERS = ("Method", "Variant", "Seeds", "Exposed", "Most exposed forgotten samples: id (score, seed)")


def exposure_cells(exposure: MethodExposure, shown: int = SHOWN_EXPOSED) -> list[str]:
    """A row of the exposure table; the method is marked † where a sanity anchor failed in some seed."""
    mark = f" {UNTRUSTED_MARK}" if exposure.untrusted_seeds else ""
    listed = ", ".join(f"{sample_id} ({score:.2f}, s{seed})" for seed, sample_id, _, score in
                       exposure.most_exposed(shown))
    return [exposure.method + mark, exposure.variant, ", ".join(map(str, exposure.seeds)),
            f"{exposure.exposed_count} of {exposure.forgotten_count}", listed or "—"]


def exposure_caption(exposures: list[MethodExposure]) -> str:
    text = ("Exposed: forgotten samples (the target's D_f) whose U-LiRA score lies above every never-seen val "
            "sample's of the same audit: the attack names them without a false positive among those. Variant "
            f"and score: {variants_text(exposures)}. Listed: the highest-scoring forgotten samples over "
            "all seeds (`unlearn audit-mia` writes every sample's score to ulira.json, every shadow's φ to "
            "ulira-scores.npz).")
    untrusted = [e.method for e in exposures if e.untrusted_seeds]
    if untrusted:
        text += (f" {UNTRUSTED_MARK} a sanity anchor failed in some seed ({', '.join(untrusted)}): those methods' "
                 "scores, histograms and exposed samples must not be trusted.")
    return text
