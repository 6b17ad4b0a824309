"""r1-operator: the control plane (planning, manifests, reconciliation) and r1ctl."""
