"""The R1Deployment API: pydantic types and the CRD generated from them (pure; no kopf or kubernetes)."""
