"""Deletion requests against a production model: the retrain-free acceptance gate, the audit chain and the
receipt. The job that runs a request is `jobs/forget.py` (`unlearn forget`); `jobs/audit.py` verifies a chain."""
