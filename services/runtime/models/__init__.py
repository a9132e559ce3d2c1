"""Model calls: the OpenAI-compatible client, its errors, the HTTP pool, the breaker, the shared
rate budget, offline token counts, and the endpoint registry."""
