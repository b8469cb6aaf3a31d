"""The rules: tenants, keys, apps. No HTTP, no Docker; state through repositories."""
