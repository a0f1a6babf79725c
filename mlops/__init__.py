"""The host side: everything that runs on the user's machine or in CI, never inside a SageMaker container.

``mlops.cli`` (the ``mlops`` command), ``mlops.definition`` (build, model and validation of the pipeline
definition), ``mlops.local`` (the local executor), ``mlops.registry`` (Model Registry clients), ``mlops.aws``
(the SageMaker driver), ``mlops.serve`` (the local endpoint), ``mlops.staging`` and ``mlops.store``.
"""

import os

# The local executor evaluates SageMaker Debugger rules with smdebug, whose generated protobuf modules load only
# with the pure-python protobuf runtime; the choice is fixed when google.protobuf is first imported (the SageMaker
# SDK imports it), so it is made here, before anything in this package is imported.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
