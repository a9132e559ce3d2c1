"""The judge: grades each answer on the batch's criteria with an LLM, strictly."""
