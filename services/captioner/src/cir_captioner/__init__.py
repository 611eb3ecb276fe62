"""Captioner service of the CIR suite."""
