"""Offline evaluation on CIRCO, CIRR and FashionIQ with the official protocols (method.md section 5)."""
