"""moorage control plane: the HTTP API, the rules, and the state."""
