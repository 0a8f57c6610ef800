"""Ray Tune sweeps of unlearning methods' settings against RF-JSD (`unlearn sweep`, jobs/sweep.py).

- spaces:    per-method search spaces (configs/sweeps/<method>.yaml + overrides) → Tune domains or grids
- objective: the feasibility rule (accuracy drop vs the original) and the objective Tune minimises
- trial:     one trial = the real `unlearn run` through its own Ray Train fit, reporting every epoch
- tuner:     one Tune experiment per method: start, restore, read back its trials
- callbacks: a progress line per trial event, a resumable pause after N trials, and the release of
             the resources a stopped trial's Train run leaves reserved
- outputs:   trial table, best configs, RF-JSD heatmaps

Tuning holds no algorithm: a trial composes `pipeline.runs.unlearn.unlearn`; nothing here imports jobs/.
"""
