"""r1-dev: tools for tests, the demo and benchmarks, not for production: miniature R1 models, a local
Hugging Face-compatible hub, a runtime server helper. Shipped in the same wheel; nothing in the two
planes imports it."""
