"""Images in and out: decoding, analysis for text-only models, and drawing."""
