"""Notifiers: each turns a handoff into a message for one service."""
