"""Local executor: runs a SageMaker pipeline definition JSON with no AWS and no Docker."""
