"""The HTTP front end: OpenAI-shaped routes, services, CLI."""

__version__ = "0.1.0"
