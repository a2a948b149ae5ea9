"""In-process fake servers that speak the real wire protocols, for tests."""
