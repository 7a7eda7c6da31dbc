"""Optimizer studies: grids of optimizers x learning rates x seeds, trained, stored and resumed."""
