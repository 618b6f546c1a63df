"""The gateway stage: identity, policy and accounting in front of the dataplane (no web imports)."""
