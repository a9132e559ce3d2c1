"""The generator: turns a start-batch command into an accepted batch and one event per prompt."""
