"""Agents: targets (`agent.<name>`) that are woken with a handoff and do the work themselves."""
