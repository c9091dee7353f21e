"""Hostile-server suite: a raw TCP server that misbehaves on purpose, and what the client does."""
