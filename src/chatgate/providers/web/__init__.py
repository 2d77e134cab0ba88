"""Reaching the web on a user's behalf: the guarded fetcher."""
