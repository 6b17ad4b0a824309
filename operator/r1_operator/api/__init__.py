"""The R1Deployment API: the planes' contract (contract.py, dependency-free), pydantic types and the CRD generated from them."""
