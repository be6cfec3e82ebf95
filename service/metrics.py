"""Prometheus metrics of one API process (`GET /metrics`).

Counters and histograms are kept by the process that served the calls (scrape every API
process); the gauges of trials, experiments, queues and workers are read from SQL at scrape
time, so every process reports the same totals.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, true

from sweep.service import workers
from sweep.service.db import Database
from sweep.service.states import ExperimentState, TrialState
from sweep.service.tables import Experiment, Trial

LIVE = (ExperimentState.RUNNING, ExperimentState.PAUSED)
# Seconds: a claim or an ask takes milliseconds, a slow one up to a second or so.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.claims = Counter(
            "sweep_claims", "Claims answered, by outcome (trial, none)", ["outcome"], registry=r
        )
        self.reports = Counter(
            "sweep_reports",
            "Epoch reports, by the answer (continue, prune, stop)",
            ["action"],
            registry=r,
        )
        self.claims_waiting = Gauge(
            "sweep_claims_waiting",
            "Claims this process holds open until a trial can start (long polls)",
            registry=r,
        )
        self.waiting_for_end = Gauge(
            "sweep_requests_waiting_for_end",
            "Requests this process holds until their experiment ends (GET with wait)",
            registry=r,
        )
        self.claim_seconds = Histogram(
            "sweep_claim_seconds",
            "Time to look for and start a trial (one try of a claim)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.ask_seconds = Histogram(
            "sweep_sampler_ask_seconds",
            "Time the sampler takes to suggest a trial's params",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.lease_expiries = Counter(
            "sweep_lease_expiries",
            "Running trials whose worker went silent for a lease",
            registry=r,
        )
        self.http_seconds = Histogram(
            "sweep_http_request_duration_seconds",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            buckets=FAST_BUCKETS,
            registry=r,
        )

    def exposition(self, db: Database, project: str | None) -> bytes:
        """Everything in Prometheus's text format; the gauges read from SQL cover `project`'s
        experiments and workers only (None: every project)."""
        sql = CollectorRegistry()
        sql.register(_FromDatabase(db, project))
        return generate_latest(self.registry) + generate_latest(sql)


class _FromDatabase(Collector):
    """Gauges read from SQL when scraped, of one project (None: all)."""

    def __init__(self, db: Database, project: str | None) -> None:
        self.db, self.project = db, project

    def collect(self) -> Iterator[Metric]:
        trials = GaugeMetricFamily(
            "sweep_trials",
            "Trials of running and paused experiments, by state",
            labels=["experiment", "state"],
        )
        queue = GaugeMetricFamily(
            "sweep_queue_depth",
            "Trials a worker could claim now: queued ones plus the budget not yet created",
            labels=["experiment"],
        )
        experiments = GaugeMetricFamily(
            "sweep_experiments", "Experiments by state", labels=["state"]
        )
        active = GaugeMetricFamily(
            "sweep_active_workers", "Live workers: running a trial, or claimed in the last minutes"
        )
        mine = Experiment.project == self.project if self.project is not None else true()
        with self.db.transaction(write=False) as session:
            by_state = dict.fromkeys(ExperimentState, 0) | dict(
                session.execute(
                    select(Experiment.state, func.count()).where(mine).group_by(Experiment.state)
                ).all()
            )
            live = session.execute(
                select(Experiment.id, Experiment.state, Experiment.n_trials).where(
                    Experiment.state.in_(LIVE), mine
                )
            ).all()
            counts = session.execute(
                select(Trial.experiment_id, Trial.state, func.count())
                .join(Experiment, Experiment.id == Trial.experiment_id)
                .where(Experiment.state.in_(LIVE), mine)
                .group_by(Trial.experiment_id, Trial.state)
            ).all()
            active.add_metric([], len(workers.live(session, self.project)))
        per_experiment: dict[int, dict[str, int]] = {
            e.id: dict.fromkeys(TrialState, 0) for e in live
        }
        for experiment_id, state, n in counts:
            if experiment_id in per_experiment:  # else it went live between the two reads
                per_experiment[experiment_id][state] = n
        for experiment_id, state, n_trials in live:
            states = per_experiment[experiment_id]
            for trial_state, n in states.items():
                trials.add_metric([str(experiment_id), str(trial_state)], n)
            if state == ExperimentState.RUNNING:
                unmade = max(0, n_trials - sum(states.values()))
                queue.add_metric([str(experiment_id)], states[TrialState.QUEUED] + unmade)
        for state, n in by_state.items():
            experiments.add_metric([str(state)], n)
        yield from (trials, queue, experiments, active)
