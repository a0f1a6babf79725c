"""MLOps pipelines for image classification: the SageMaker definition, its CLI, and the local executor."""

import os

# The local executor evaluates SageMaker Debugger rules with smdebug, whose generated protobuf modules load only
# with the pure-python protobuf runtime; the choice is fixed when google.protobuf is first imported (the SageMaker
# SDK imports it), so it is made here, before anything in this package is imported.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
