"""Interfaces: the command line (and, later, the agent endpoint)."""
