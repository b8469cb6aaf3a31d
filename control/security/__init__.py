"""Key material and access rules: API key tokens, scopes."""
