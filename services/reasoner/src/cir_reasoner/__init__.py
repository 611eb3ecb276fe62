"""Reasoner service of the CIR suite."""
