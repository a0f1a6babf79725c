"""Amazon SageMaker, driven with boto3 from the host: upsert, start, wait, list and describe pipeline executions."""
