"""The local endpoint: SageMaker's serving contract on gunicorn + falcon, and deploying Approved models to it."""
