"""Membership inference attack on per-sample softmax entropy.

A class-balanced logistic regression learns "member" from D_r entropies and
"non-member" from D_test entropies; the reported value is the fraction of D_f
it calls "member". A model that has truly forgotten D_f looks at D_f the way
the retrained model does, which never saw it.
"""

from __future__ import annotations

import numpy as np

MEMBER, NON_MEMBER = 1, 0


def seeded_subsample(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` values chosen without replacement; callers pass values in a fixed order so the choice is repeatable."""
    if size >= len(values):
        return values
    return values[np.sort(rng.choice(len(values), size=size, replace=False))]


def mia_member_rate(member_entropies: np.ndarray, nonmember_entropies: np.ndarray, target_entropies: np.ndarray,
                    seed: int, max_per_class: int | None = None) -> float:
    """Fraction of `target_entropies` the attack predicts as members.

    The attack trains on equally many members and non-members (the smaller set's size,
    capped by `max_per_class`), chosen by a generator seeded with `seed`. Inputs must come
    in a canonical order (SplitStats.reduce sorts by sample-id hash) for the choice to be
    the same on any number of workers.
    """
    member_entropies, nonmember_entropies, target_entropies = (
        np.asarray(a, dtype=np.float64).ravel() for a in (member_entropies, nonmember_entropies, target_entropies))
    if min(len(member_entropies), len(nonmember_entropies), len(target_entropies)) == 0:
        raise ValueError("MIA needs at least one member, one non-member and one target entropy")
    size = min(len(member_entropies), len(nonmember_entropies), max_per_class or np.inf)
    rng = np.random.default_rng(seed)
    members = seeded_subsample(member_entropies, int(size), rng)
    nonmembers = seeded_subsample(nonmember_entropies, int(size), rng)
    features = np.concatenate([members, nonmembers]).reshape(-1, 1)
    targets = np.concatenate([np.full(len(members), MEMBER), np.full(len(nonmembers), NON_MEMBER)])
    # Imported here: scikit-learn takes seconds to import and only the MIA needs it, not every worker that sums stats.
    from sklearn.linear_model import LogisticRegression

    attack = LogisticRegression(class_weight="balanced", random_state=seed)
    attack.fit(features, targets)
    return float(np.mean(attack.predict(target_entropies.reshape(-1, 1)) == MEMBER))
