"""Training engine: stages, iteration, handlers."""
