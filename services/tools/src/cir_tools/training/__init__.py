"""Trainers of the model families on CPU with the production classes and on-disk formats."""
