"""Read GGUF headers (local files or HTTP range requests) into planning's ModelFacts."""
