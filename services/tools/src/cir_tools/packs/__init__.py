"""Model packs: tiny random models in the real formats (and the profile that points the services at them)."""
