"""An HTTP embedding endpoint on Ray Serve (`angle-ray serve`): OpenAI-style `/v1/embeddings`."""
