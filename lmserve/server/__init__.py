"""The HTTP server: OpenAI- and TGI-compatible APIs over the AsyncEngine, with admission control and metrics."""
