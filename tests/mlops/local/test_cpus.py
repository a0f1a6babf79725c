"""The CPU pool: critical path first, cores kept for a tuner between trials, idle cores lent and taken back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mlops.local.cpus import CpuPool
from training.job_env import CPU_GRANT_FILE_ENV, granted_cpus


def _acquire_in_thread(claim, got: list, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=lambda: got.append(claim.acquire(**kwargs)), daemon=True)
    thread.start()
    return thread


def _settle() -> None:
    time.sleep(0.1)


def test_alone_a_job_gets_the_whole_budget_and_gives_it_back():
    pool = CpuPool(2)
    lease = pool.acquire()
    assert lease.cpus == 2 and pool.free == 0
    lease.release()
    assert pool.free == 2 and pool.holders == 0


def test_the_critical_path_is_served_first_and_keeps_cores_between_trials():
    pool = CpuPool(2)
    xgboost = pool.claim("TrainXGBoost", priority=100)
    tuner = pool.claim("TuneCNN", priority=400, jobs=2)
    got: list = []
    waiter = _acquire_in_thread(xgboost, got)
    _settle()
    assert got == []  # both cores are kept for the tuner's two trials
    trial_1, trial_2 = tuner.acquire(cap=1), tuner.acquire(cap=1)
    assert (trial_1.cpus, trial_2.cpus) == (1, 1)
    trial_1.release()  # between trials: the tuner has more to launch, so the core waits for it
    _settle()
    assert got == []
    trial_3 = tuner.acquire(cap=1)
    trial_2.release()
    tuner.set_jobs(1)  # the last trial is running: nothing more to keep
    waiter.join(2)
    assert [lease.cpus for lease in got] == [1]
    trial_3.release()
    tuner.close()
    got[0].release()
    xgboost.close()
    assert pool.free == 2


def test_a_fair_share_splits_the_budget_among_jobs_running_or_wanted():
    pool = CpuPool(4)
    first = pool.claim("TrainCNN", priority=300)
    second = pool.claim("TrainXGBoost", priority=100)
    cnn = first.acquire()
    assert cnn.cpus == 2  # two jobs want cores: half each
    xgb = second.acquire()
    assert xgb.cpus == 2
    cnn.release()
    xgb.release()


def test_idle_cores_go_to_a_growable_job_and_come_back_when_another_asks(tmp_path: Path):
    pool = CpuPool(2)
    cnn_claim = pool.claim("TrainCNN", priority=300)
    xgb_claim = pool.claim("TrainXGBoost", priority=100)
    grant = tmp_path / "cpu-grant"
    cnn = cnn_claim.acquire(grant_file=grant)
    xgb = xgb_claim.acquire()
    assert (cnn.cpus, xgb.cpus) == (1, 1)
    assert granted_cpus({CPU_GRANT_FILE_ENV: str(grant)}) == 1
    xgb.release()
    xgb_claim.close()
    assert cnn.cpus == 2 and pool.free == 0  # XGBoost is done: the CNN grows into its core
    assert granted_cpus({CPU_GRANT_FILE_ENV: str(grant)}) == 2
    late = pool.claim("Evaluate", priority=50)
    assert cnn.cpus == 1 and pool.free == 1  # taken back as soon as another step wants a core
    assert granted_cpus({CPU_GRANT_FILE_ENV: str(grant)}) == 1
    evaluate = late.acquire()
    assert evaluate.cpus == 1
    evaluate.release()
    late.close()
    assert cnn.cpus == 2 and cnn.peak == 2 and cnn.base == 1
    cnn.release()
    cnn_claim.close()
    assert pool.free == 2


def test_a_claim_closed_before_asking_frees_what_it_kept():
    pool = CpuPool(2)
    cached = pool.claim("TrainCNN", priority=500)  # a cache hit: it never asks
    other = pool.claim("TrainXGBoost", priority=10)
    got: list = []
    waiter = _acquire_in_thread(other, got)
    _settle()
    assert got[0].cpus == 1  # one core kept for the higher claim, one served
    got[0].release()
    cached.close()
    again = other.acquire()
    assert again.cpus == 2
    again.release()
    waiter.join(1)


def test_a_closed_claim_cannot_acquire_and_bad_budgets_are_refused():
    pool = CpuPool(1)
    claim = pool.claim("x")
    claim.close()
    with pytest.raises(RuntimeError, match="closed"):
        claim.acquire()
    with pytest.raises(ValueError, match="at least 1"):
        CpuPool(0)


def test_the_job_side_reader_ignores_missing_and_garbled_files(tmp_path: Path):
    assert granted_cpus({}) is None
    assert granted_cpus({CPU_GRANT_FILE_ENV: str(tmp_path / "absent")}) is None
    garbled = tmp_path / "garbled"
    garbled.write_text("two\n")
    assert granted_cpus({CPU_GRANT_FILE_ENV: str(garbled)}) is None
    garbled.write_text("0\n")
    assert granted_cpus({CPU_GRANT_FILE_ENV: str(garbled)}) is None
