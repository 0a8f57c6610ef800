"""Shard format, readers, split manifests and converters (DESIGN §3)."""
