"""Engines and upstreams behind one interface."""
