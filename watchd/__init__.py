"""watchd: wake agents only when a watched condition matches."""

__version__ = "0.1.0"
