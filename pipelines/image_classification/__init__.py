"""The image-classification pipeline: get_pipeline and its parts (parameters, tuning, debugging, session)."""
