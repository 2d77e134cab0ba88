"""Embedding models: the in-process ONNX Runtime engine, OpenAI-compatible upstreams, and routing among them."""
