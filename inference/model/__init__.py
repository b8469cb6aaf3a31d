"""Model tooling for inference nodes: build a tiny Mixture-of-Experts checkpoint offline
(for tests and CPU demos) and inspect any Qwen3-MoE checkpoint's experts and routing."""
