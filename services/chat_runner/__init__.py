"""The chat-runner: sends each queued prompt to the model under test."""
