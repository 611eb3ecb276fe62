"""Encoder service of the CIR suite."""
