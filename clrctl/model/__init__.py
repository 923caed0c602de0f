"""Models: built-in and user architectures, starting weights, the training loss."""
