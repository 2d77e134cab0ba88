"""chatgate: a self-hosted, OpenAI-compatible Chat Completions gateway."""

__version__ = "0.1.0"
