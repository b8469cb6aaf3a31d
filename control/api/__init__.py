"""HTTP layer: one module per resource, plus the cross-cutting pieces (auth, problems)."""
