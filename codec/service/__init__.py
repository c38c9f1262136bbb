"""Plumbing shared by the edge service and the ground daemon (which never import each other):
durable file writes, YAML configs with one-line errors, systemd notifications."""
