"""The operator's calls to the Kubernetes API server (the dev cluster in r1_operator.dev has its own admin client)."""
