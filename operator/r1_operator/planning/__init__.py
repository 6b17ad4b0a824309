"""Capacity planning: pure functions from a model description and node inventory to a Plan.

No kopf, no kubernetes, no I/O: enforced by an import-linter contract.
"""
