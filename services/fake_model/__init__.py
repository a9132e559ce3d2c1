"""A deterministic fake LLM server speaking the OpenAI chat-completions API."""
