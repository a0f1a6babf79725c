"""SageMaker pipeline definitions, built with the SageMaker Python SDK: ``get_pipeline(...)`` and its parts.

Nothing here runs jobs or talks to AWS: the host package (``mlops``) builds the definition JSON from these
functions, validates it, runs it locally or sends it to SageMaker.
"""

import logging
import os

# Before the SDK is first imported: it warns about v2's deprecation and logs where it looked for defaults files.
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
if logging.getLogger("sagemaker.config").level == logging.NOTSET:
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
