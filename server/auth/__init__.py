"""API keys, plans and who is calling."""
