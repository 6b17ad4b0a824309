"""r1-runtime: the data plane of r1-operator (fetch, merge and serve GGUF models)."""

__version__ = "0.1.0"
