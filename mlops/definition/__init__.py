"""The pipeline definition on the host: its build (config, build), one typed model (grammar, model) and the validator."""
