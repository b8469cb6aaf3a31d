"""Training text for the tiny model, written for moorage (one sentence or paragraph per line)."""
