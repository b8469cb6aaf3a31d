"""Engine side of an inference node: the engine command line (vLLM on GPU,
`transformers serve` on CPU), and the supervisor that keeps it running and drains it."""
