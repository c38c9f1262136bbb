"""Deployment: systemd units, broker config, example configs, and the local whole-pipeline run."""
