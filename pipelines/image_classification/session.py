"""A PipelineSession that builds definitions offline: no credentials, no telemetry, no network call.

How it stays offline (aws/sagemaker-python-sdk #2676): explicit region and default bucket, telemetry sending
patched off, a boto3 session with no credential providers (an accidental AWS call fails instead of reaching
out), and SDK-defaults files ignored so the definition does not depend on who builds it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import boto3
import botocore.session
from botocore.credentials import CredentialResolver
from sagemaker.telemetry import telemetry_logging
from sagemaker.workflow.pipeline_context import PipelineSession


def disable_telemetry() -> None:
    """The SDK sends a GET to S3 after many calls; building a definition must make no network call."""
    telemetry_logging._send_telemetry_request = lambda *args, **kwargs: None


def offline_boto_session(region: str) -> boto3.Session:
    """A boto3 session with no credential providers: creating clients looks nothing up (no instance-metadata
    call), and an accidental AWS call while building fails instead of reaching out."""
    core = botocore.session.get_session()
    core.register_component("credential_provider", CredentialResolver(providers=[]))
    return boto3.Session(botocore_session=core, region_name=region)


@contextlib.contextmanager
def offline_default_session(boto_session: boto3.Session) -> Iterator[None]:
    """Estimators create a ``boto3.client`` from the default session (TensorBoardApp); point it offline."""
    previous = boto3.DEFAULT_SESSION
    boto3.DEFAULT_SESSION = boto_session
    try:
        yield
    finally:
        boto3.DEFAULT_SESSION = previous


@contextlib.contextmanager
def quiet_sdk() -> Iterator[None]:
    """The SDK logs a dozen expected notes per build (job names popped, no wait in a PipelineSession).

    Step arguments are computed lazily, so wrap ``pipeline.definition()`` in this too.
    """
    loggers = [logging.getLogger(name) for name in ("sagemaker", "sagemaker.config")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Running within a PipelineSession")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def get_session(region: str, default_bucket: str) -> PipelineSession:
    """A PipelineSession that never needs credentials: explicit region and bucket, nothing resolved."""
    disable_telemetry()
    session = PipelineSession(boto_session=offline_boto_session(region), default_bucket=default_bucket)
    # An empty SDK config also skips a JSON-schema validation on every lookup (slow).
    session.sagemaker_config = {}
    session._default_bucket = default_bucket  # skip the create-bucket call default_bucket() would make
    return session
