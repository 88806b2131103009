"""Meta-training the editor: configuration, examples, objective, and the training loop."""
