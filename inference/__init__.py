"""GPU/CPU inference node: serves a Mixture-of-Experts model (vLLM on GPU hosts,
`transformers serve` on CPU) and registers with the control plane's gateway."""
