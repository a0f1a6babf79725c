"""The CPU budget of one execution, handed out by critical path.

On SageMaker every job gets its own instance; locally all jobs share this machine's cores, so the order in
which jobs get them decides how long the execution takes. The rules:

- Every step that runs jobs holds a :class:`Claim`, opened by the engine when the step becomes ready, with a
  priority (the longest remaining path from that step to the end of the pipeline, in estimated seconds:
  :mod:`mlops.local.critical_path`) and how many jobs it may run at once (a tuning step: its parallel trials).
- A job asks its claim for cores (:meth:`Claim.acquire`). Waiting jobs are served highest priority first, and
  a core that a higher-priority claim is about to ask for (it has fewer jobs running than it may run) is kept
  for it: a tuning step between two trials does not lose its core to a step off the critical path.
- A job's grant is its fair share: the budget divided among the jobs running or wanted, at least 1 and at
  most its cap.
- Cores nobody waits for go to running jobs that can take more (those that read a grant file, named to the
  job by ``$MLOPS_CPU_GRANT_FILE``), highest priority first; they are taken back as soon as another job asks.
  A job reads the file between epochs or rounds, so for a moment the machine may be oversubscribed.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from training.atomic import atomic_write_text


class CpuPool:
    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a CPU budget needs at least 1 core, got {total}")
        self.total = total
        self.free = total
        self._claims: list[Claim] = []
        self._order = itertools.count()
        self._cond = threading.Condition()

    # --- claims ---------------------------------------------------------------------------------------------

    def claim(self, name: str, priority: float = 0.0, jobs: int = 1) -> Claim:
        """Open a claim for a step that will run up to ``jobs`` jobs at once."""
        with self._cond:
            claim = Claim(self, name, priority, max(0, jobs), next(self._order))
            self._claims.append(claim)
            self._rebalance()
            return claim

    def acquire(self, cap: int | None = None, priority: float = 0.0, name: str = "job",
                grant_file: Path | None = None) -> Lease:
        """Cores for one job without a claim of its own (a claim that closes when the lease is released)."""
        claim = self.claim(name, priority)
        lease = claim.acquire(cap, grant_file)
        lease.closes_claim = True
        return lease

    @property
    def holders(self) -> int:
        with self._cond:
            return sum(len(c.active) for c in self._claims)

    # --- internals (under the condition) ------------------------------------------------------------------

    def _rank(self, claim: Claim) -> tuple[float, int]:
        return (-claim.priority, claim.order)

    def _can_serve(self, claim: Claim) -> bool:
        kept = sum(c.unmet for c in self._claims if c is not claim and self._rank(c) < self._rank(claim))
        return self.free - kept >= 1

    def _grant_size(self, claim: Claim, cap: int | None) -> int:
        wanted = sum(len(c.active) + c.unmet for c in self._claims)
        share = max(1, self.total // max(1, wanted))
        return max(1, min(self.free, share, cap or self.total))

    def _rebalance(self) -> None:
        """Take grown cores back while anyone is owed one; hand idle cores to growable jobs otherwise."""
        demand = sum(c.unmet for c in self._claims)
        leases = [lease for c in sorted(self._claims, key=self._rank) for lease in c.active]
        if demand:
            for lease in reversed(leases):  # lowest priority gives back first
                if self.free >= demand:
                    break
                if lease.cpus > lease.base:
                    self.free += lease.cpus - lease.base
                    lease._set(lease.base)
        else:
            for lease in leases:
                if self.free < 1:
                    break
                if lease.grant_file is not None and lease.cpus < self.total:
                    extra = min(self.free, self.total - lease.cpus)
                    self.free -= extra
                    lease._set(lease.cpus + extra)
        self._cond.notify_all()


class Claim:
    """One step's place in the CPU queue: its priority and how many jobs it may run at once."""

    def __init__(self, pool: CpuPool, name: str, priority: float, jobs: int, order: int) -> None:
        self.pool, self.name, self.priority, self.jobs, self.order = pool, name, priority, jobs, order
        self.active: list[Lease] = []
        self.waiting = 0
        self.closed = False

    @property
    def unmet(self) -> int:
        """Jobs this claim may still start now (waiting ones included)."""
        if self.closed:
            return 0
        return max(self.waiting, self.jobs - len(self.active))

    def acquire(self, cap: int | None = None, grant_file: Path | None = None) -> Lease:
        """Block until this job may have cores; the lease says how many (``grant_file`` lets them grow)."""
        pool = self.pool
        with pool._cond:
            if self.closed:
                raise RuntimeError(f"CPU claim {self.name} is closed")
            self.waiting += 1
            pool._rebalance()  # a grown job gives cores back for this one
            while not pool._can_serve(self):
                pool._cond.wait()
            self.waiting -= 1
            grant = pool._grant_size(self, cap)
            pool.free -= grant
            lease = Lease(self, grant, grant_file)
            self.active.append(lease)
            lease._set(grant)
            pool._rebalance()
            return lease

    def set_jobs(self, jobs: int) -> None:
        """How many jobs the step may still run at once (a tuner: trials running + trials still to launch)."""
        with self.pool._cond:
            self.jobs = max(0, jobs)
            self.pool._rebalance()

    def close(self) -> None:
        """The step is done with cores (also when it ended before asking: cache hit, bad input)."""
        with self.pool._cond:
            if self.closed:
                return
            self.closed = True
            if not self.active:
                self.pool._claims.remove(self)
            self.pool._rebalance()


class Lease:
    """The cores one running job holds; ``cpus`` changes only for a job with a grant file."""

    def __init__(self, claim: Claim, cpus: int, grant_file: Path | None) -> None:
        self.claim = claim
        self.base = cpus  # what it was granted when it started
        self.cpus = cpus
        self.peak = cpus
        self.grant_file = grant_file
        self.closes_claim = False
        self.released = False

    def _set(self, cpus: int) -> None:
        self.cpus = cpus
        self.peak = max(self.peak, cpus)
        if self.grant_file is not None:
            write_grant(self.grant_file, cpus)

    def release(self) -> None:
        pool = self.claim.pool
        with pool._cond:
            if self.released:
                return
            self.released = True
            pool.free += self.cpus
            self.claim.active.remove(self)
            if self.closes_claim:
                self.claim.closed = True
            if self.claim.closed and not self.claim.active:
                pool._claims.remove(self.claim)
            pool._rebalance()


def write_grant(path: Path, cpus: int) -> None:
    """Atomically (temp file + rename), so a job never reads a half-written number."""
    atomic_write_text(path, f"{cpus}\n")
