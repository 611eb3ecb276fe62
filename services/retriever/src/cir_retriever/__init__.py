"""Retriever service of the CIR suite."""
