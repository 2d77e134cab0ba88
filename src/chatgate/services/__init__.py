"""Business rules; no web framework here."""
