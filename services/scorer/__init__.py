"""The scorer: turns each prompt's judgments into its verdict."""
