"""Offline evaluation: temporal splits, full-catalogue ranking metrics, baselines, reports."""
