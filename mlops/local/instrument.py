"""Debugger and Profiler around one local training job, as SageMaker runs them around a CreateTrainingJob.

From the request's DebugHookConfig / DebugRuleConfigurations / ProfilerConfig this writes the files the
platform gives the container (``input/config/debughookconfig.json`` with LocalPath = the job's
``output/tensors``; the profiler config), sets the variables smdebug and training/debugger.py read, samples
the job's process tree while it runs, evaluates the rules alongside (stopping the job when a rule with a
StopTraining action fires), and at the end uploads what SageMaker would (tensors under
``{DebugHookConfig.S3OutputPath}/{job}/debug-output``, rule results and the profiler report under
``{ProfilerConfig.S3OutputPath}/{job}/rule-output``) and returns the DescribeTrainingJob fields.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from mlops import store
from mlops.local import records
from mlops.local.profiler import SystemSampler, write_report
from mlops.local.rules import ERROR, RuleRunner

RULE_POLL_S = 2.0
REPORT_PATH = "rule-output/ProfilerReport/profiler-output/profiler-report.html"


def profiler_report_uri(properties: dict[str, Any]) -> str | None:
    """Where a training job's profiler report is (from its DescribeTrainingJob record), or None."""
    config = properties.get("ProfilerConfig") or {}
    base = config.get("S3OutputPath")
    if not base or config.get("DisableProfiler"):
        return None
    return f"{base.rstrip('/')}/{properties['TrainingJobName']}/{REPORT_PATH}"


class JobInstruments:
    def __init__(self, request: dict[str, Any], job_name: str, work_dir: Path) -> None:
        self.job_name = job_name
        self.hook_config = request.get("DebugHookConfig") or None
        self.rule_configs = list(request.get("DebugRuleConfigurations") or [])
        profiler = request.get("ProfilerConfig") or {}
        self.profiler_config = profiler if profiler and not profiler.get("DisableProfiler") else None
        self.config_dir = work_dir / "input" / "config"
        self.tensors_dir = work_dir / "output" / "tensors"
        self.profiler_dir = work_dir / "output" / "profiler"
        self.sampler: SystemSampler | None = None
        self.runner: RuleRunner | None = None
        self.stop_reason: str | None = None
        self._done = threading.Event()
        self._poller: threading.Thread | None = None
        if self.hook_config is not None and self.rule_configs:
            self.runner = RuleRunner(self.tensors_dir, self.rule_configs, job_name,
                                     in_progress=records.in_progress_training_jobs)

    @classmethod
    def from_request(cls, request: dict[str, Any], job_name: str, work_dir: Path) -> JobInstruments | None:
        profiler = request.get("ProfilerConfig") or {}
        wanted = request.get("DebugHookConfig") or (profiler and not profiler.get("DisableProfiler"))
        return cls(request, job_name, work_dir) if wanted else None

    def environment(self) -> dict[str, str]:
        """Write the container's config files; the variables that point the job at them."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        env = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
        if self.hook_config is not None:
            hook = {k: v for k, v in self.hook_config.items() if k != "S3OutputPath"}
            hook["LocalPath"] = str(self.tensors_dir)
            path = self.config_dir / "debughookconfig.json"
            path.write_text(json.dumps(hook, indent=2))
            env["SMDEBUG_CONFIG_FILE_PATH"] = str(path)
        if self.profiler_config is not None:
            config = json.loads(json.dumps(self.profiler_config))
            config.setdefault("ProfilingParameters", {})["LocalPath"] = str(self.profiler_dir)
            # where SageMaker writes it (/opt/ml/input/config); not smdebug's variable, so its own profiler stays off
            (self.config_dir / "profilerconfig.json").write_text(json.dumps(config, indent=2))
        return env

    def started(self, pid: int) -> None:
        if self.profiler_config is not None:
            interval = int(self.profiler_config.get("ProfilingIntervalInMilliseconds") or 500)
            self.sampler = SystemSampler(interval / 1000)
            self.sampler.start(pid)
        if self.runner is not None:
            self._poller = threading.Thread(target=self._poll, name=f"rules-{self.job_name}", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        assert self.runner is not None
        while not self._done.wait(RULE_POLL_S):
            try:
                fired = self.runner.poll()
            except Exception:  # noqa: BLE001 - the final pass reports the error as the rule's status
                return
            if fired and self.stop_reason is None:
                self.stop_reason = (f"stopped by the Debugger rule {fired[0]} (StopTraining action): "
                                    f"{self.runner.status[fired[0]]['StatusDetails']}")

    def finish(self, cpus: int, failed: str | None = None) -> dict[str, Any]:
        """Stop sampling, run the rules' final pass, write and upload the outputs; the record's fields."""
        self._done.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        fields: dict[str, Any] = {}
        if self.hook_config is not None:
            fields["DebugHookConfig"] = self.hook_config
            base = self.hook_config.get("S3OutputPath")
            if base and self.tensors_dir.is_dir():
                store.upload_dir(self.tensors_dir, f"{base.rstrip('/')}/{self.job_name}/debug-output")
        if self.runner is not None:
            statuses = self.runner.finish(error=None)
            fields["DebugRuleConfigurations"] = self.rule_configs
            fields["DebugRuleEvaluationStatuses"] = [
                dict(s, RuleEvaluationJobArn=f"local:rule/{self.job_name}/{s['RuleConfigurationName']}")
                for s in statuses]
            if failed and not self.tensors_dir.is_dir():
                for status in fields["DebugRuleEvaluationStatuses"]:
                    status.update(RuleEvaluationStatus=ERROR, StatusDetails=f"the training job failed: {failed}")
        if self.profiler_config is not None:
            samples = self.sampler.stop() if self.sampler else []
            interval = int(self.profiler_config.get("ProfilingIntervalInMilliseconds") or 500)
            self.profiler_dir.mkdir(parents=True, exist_ok=True)
            (self.profiler_dir / "system_metrics.json").write_text(json.dumps(
                {"interval_ms": interval, "sample_seconds": self.sampler.sample_seconds if self.sampler else 0.0,
                 "samples": samples}))
            try:  # a report that cannot be drawn must not fail a training job that succeeded
                report = write_report(self.profiler_dir / "profiler-report.html", self.job_name, samples,
                                      self.profiler_dir / "framework", cpus, interval)
                base = self.profiler_config["S3OutputPath"].rstrip("/")
                store.upload_dir(self.profiler_dir, f"{base}/{self.job_name}/profiler-output")
                properties = {"ProfilerConfig": self.profiler_config, "TrainingJobName": self.job_name}
                store.upload_file(report, profiler_report_uri(properties) or "")
            except (OSError, ValueError, RuntimeError) as exc:
                fields["ProfilerReportError"] = f"{type(exc).__name__}: {exc}"
            fields.update(ProfilerConfig=self.profiler_config, ProfilingStatus="Enabled",
                          ProfilerSamplingSeconds=round(self.sampler.sample_seconds, 4) if self.sampler else 0.0,
                          ProfilerSamples=len(samples))
        fields["LastModifiedTime"] = time.time()
        return fields
