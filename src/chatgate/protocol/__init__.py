"""OpenAI wire models: requests, responses, stream chunks, models and the error envelope.

This package imports nothing else of chatgate, so every layer may depend on it.
"""
