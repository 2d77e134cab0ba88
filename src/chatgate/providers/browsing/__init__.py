"""Browsing models: search, read and answer with numbered, cited sources."""
