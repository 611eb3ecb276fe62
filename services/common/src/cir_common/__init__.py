"""Shared library of the CIR service suite."""
