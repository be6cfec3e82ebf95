"""Request and response bodies. Specs are validated here in shape; service.specs checks meaning."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    computed_field,
    field_validator,
)

MAX_INT = 2**31 - 1  # the integer columns' range; larger ids and counts are refused early


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


NoNul = AfterValidator(_no_nul)  # PostgreSQL cannot store NUL characters
Name = Annotated[StrictStr, Field(min_length=1, max_length=200), NoNul]
Key = Annotated[StrictStr, Field(min_length=1, max_length=64), NoNul]
Label = Annotated[StrictStr, Field(max_length=200), NoNul]
Int = Annotated[StrictInt, Field(ge=-MAX_INT, le=MAX_INT)]
Id = Annotated[StrictInt, Field(ge=1, le=MAX_INT)]
Scalar = StrictBool | Int | StrictFloat | Label
# A program a worker registers and a spec names: code on the worker, never in the spec.
OUTPUT_LIMIT = 64 * 1024
ProgramName = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class Strict(BaseModel):
    # NaN and infinities are refused everywhere: JSON cannot carry them and no bound holds.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Condition(Strict):
    """When a parameter exists: `param` (an earlier one) is active and its value is `in` the
    list and within the bounds given; e.g. {"param": "hidden_layers", "gte": 2}."""

    model_config = ConfigDict(serialize_by_alias=True)

    param: Key
    in_: list[Scalar] | None = Field(None, alias="in", min_length=1, max_length=1000)
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


class FloatParam(Strict):
    type: Literal["float"]
    when: Condition | None = None
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @field_validator("high")
    @classmethod
    def _high_not_below_low(cls, high: float, info: ValidationInfo) -> float:
        low = info.data.get("low")
        if low is not None and high < low:
            raise ValueError(f"high ({high}) must be >= low ({low})")
        return high

    @field_validator("log")
    @classmethod
    def _log_needs_positive_low(cls, log: bool, info: ValidationInfo) -> bool:
        low = info.data.get("low")
        if log and low is not None and low <= 0:
            raise ValueError(f"log scale needs low > 0 (low is {low})")
        return log

    @field_validator("step")
    @classmethod
    def _step_not_with_log(cls, step: float | None, info: ValidationInfo) -> float | None:
        if step is not None and info.data.get("log"):
            raise ValueError("step cannot be combined with log scale")
        return step


class IntParam(Strict):
    type: Literal["int"]
    when: Condition | None = None
    low: Int
    high: Int
    log: bool = False
    step: Int = Field(1, gt=0)

    _high_not_below_low = field_validator("high")(FloatParam._high_not_below_low.__func__)  # type: ignore[attr-defined]
    _log_needs_positive_low = field_validator("log")(FloatParam._log_needs_positive_low.__func__)  # type: ignore[attr-defined]

    @field_validator("step")
    @classmethod
    def _step_one_with_log(cls, step: int, info: ValidationInfo) -> int:
        if step != 1 and info.data.get("log"):
            raise ValueError("step must be 1 with log scale")
        return step


class CategoricalParam(Strict):
    type: Literal["categorical"]
    when: Condition | None = None
    choices: list[Scalar] = Field(min_length=1, max_length=1000)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Scalar]) -> list[Scalar]:
        seen = [(type(c) is bool, c) for c in choices]
        for i, key in enumerate(seen):
            if key in seen[:i]:
                raise ValueError(f"duplicate choice {choices[i]!r}")
        return choices


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class DatasetSpec(Strict):
    # A bundled dataset, or one uploaded to the experiment's project (PUT /datasets/{name}).
    name: Name
    options: dict[Key, Int | StrictFloat] = Field(default_factory=dict, max_length=20)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: StrictInt = Field(0, ge=0, le=2**32 - 1)
    # Scale features (and regression targets) by the train split's mean and std.
    standardize: StrictBool = True


class Objective(Strict):
    metric: Name
    direction: Literal["maximize", "minimize"]
    # Which epoch's value is the trial's: the best one (its weights are kept) or the last.
    reduce: Literal["best", "last"] = "best"


class SamplerSpec(Strict):
    name: Name = "tpe"
    seed: StrictInt | None = Field(None, ge=0, le=2**31 - 1)
    options: dict[Key, Scalar] = Field(default_factory=dict, max_length=20)
    # In a finite space each configuration runs once unless repeats are allowed (never in a
    # grid); when all have run, the experiment completes.
    allow_repeats: bool = False


class PrunerSpec(Strict):
    name: Name
    options: dict[Key, Scalar] = Field(default_factory=dict, max_length=20)
    # The pruner the patient pruner wraps (it waits for `patience` epochs without progress).
    wrapped: WrappedPruner | None = None


class WrappedPruner(Strict):
    name: Name
    options: dict[Key, Scalar] = Field(default_factory=dict, max_length=20)


class Budget(Strict):
    n_trials: StrictInt = Field(gt=0, le=100_000)
    max_concurrent: StrictInt = Field(4, gt=0, le=10_000)
    # How often a trial whose worker vanished is handed out again before it fails as "lost".
    max_retries: StrictInt = Field(3, ge=0, le=100)
    # This many trials in a row failing with an error fail the experiment; 0 never does.
    max_consecutive_errors: StrictInt = Field(5, ge=0, le=100_000)
    # Seconds after submission when the experiment stops, finished or not.
    timeout_s: float | None = Field(None, gt=0, le=10 * 365 * 86400)
    # Seconds one attempt of a trial may run before it fails as timed out (its program is killed).
    trial_timeout_s: float | None = Field(None, gt=0, le=10 * 365 * 86400)


class Resources(Strict):
    """What one trial of a program takes: its processes (a torchrun job's ranks) and the GPUs
    of one worker they share (its processes default to one per GPU)."""

    processes: StrictInt | None = Field(None, ge=1, le=64)
    gpus: StrictInt | None = Field(None, ge=1, le=64)


class Requirements(Strict):
    """What a worker must have to be handed this experiment's trials."""

    device: Literal["cpu", "cuda", "mps"] | None = None
    min_device_memory_gb: float | None = Field(None, gt=0, le=100_000)
    resources: Resources = Field(default_factory=lambda: Resources(processes=None, gpus=None))


class ArtifactPolicy(Strict):
    """What is kept of the trials' files. `keep_models: K` keeps the model files of the K best
    finished trials (with several objectives, those on the Pareto front) and deletes the
    others' as better ones arrive; with one objective, a trial whose model cannot be among
    them does not send it. null keeps every one."""

    keep_models: StrictInt | None = Field(None, ge=0, le=100_000)


class WarmStartTrial(Strict):
    """A finished trial from elsewhere (an Optuna study, say) for the sampler to start from:
    its params, and its value for each objective, in spec order."""

    params: dict[Key, Scalar] = Field(max_length=100)
    values: list[float] = Field(min_length=1, max_length=4)
    state: Literal["completed", "pruned"] = "completed"

    @field_validator("values")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in values):
            raise ValueError("values must be finite numbers")
        return values


class ExperimentCreate(Strict):
    name: Name
    # Defaults to the caller's project ("default" for tokens that have none).
    project: (
        Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
        | None
    ) = None
    # What trains: a program registered on the workers, or a model of the catalog on a dataset.
    program: ProgramName | None = None
    model: Name | None = None
    dataset: DatasetSpec | None = None
    # One objective, or several (a multi-objective sweep: GET .../best is the Pareto front).
    objective: Objective | None = None
    objectives: list[Objective] | None = Field(None, min_length=1, max_length=4)
    search_space: dict[Key, ParamSpec] = Field(default_factory=dict, max_length=100)
    fixed: dict[Key, Scalar] = Field(default_factory=dict, max_length=100)
    sampler: SamplerSpec = Field(default_factory=lambda: SamplerSpec(seed=None))
    # Default: sweep.service.search.pruners.DEFAULT_PRUNER with one objective, none with several.
    pruner: PrunerSpec | None = None
    budget: Budget
    requirements: Requirements = Field(
        default_factory=lambda: Requirements(
            device=None, min_device_memory_gb=None, resources=Resources(processes=None, gpus=None)
        )
    )
    artifacts: ArtifactPolicy = Field(default_factory=lambda: ArtifactPolicy(keep_models=None))
    # Trials to start from: they become the experiment's first trials (finished, no curves
    # nor weights), and n_trials is raised by their count, so the budget buys new ones.
    warm_start: list[WarmStartTrial] = Field(default_factory=list, max_length=10_000)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class TrialCounts(BaseModel):
    queued: int = 0
    running: int = 0
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    cancelled: int = 0


class BudgetChange(Strict):
    """New limits for a running or paused experiment, effective at the next claim."""

    n_trials: StrictInt | None = Field(None, gt=0, le=100_000)
    max_concurrent: StrictInt | None = Field(None, gt=0, le=10_000)


class ExperimentChange(Strict):
    budget: BudgetChange


class TrialEnqueue(Strict):
    """Params to try: every searched parameter, or some and the sampler picks the rest."""

    params: dict[Key, Scalar] = Field(default_factory=dict, max_length=100)


class Importance(BaseModel):
    metric: str
    evaluator: str
    trials: int  # completed trials it was computed from
    importances: dict[str, float]  # parameter -> share of the objective's variance, largest first


class ExperimentRead(BaseModel):
    id: int
    name: str
    project: str
    state: str
    spec: dict[str, Any]
    n_trials: int
    max_concurrent: int
    trials_created: int
    counts: TrialCounts
    best_value: float | None
    best_trial_id: int | None
    best_trial: str | None = None  # its name, EXPERIMENT/NUMBER
    stop_reason: str | None
    # Why a running experiment with work left gets no trials run: no live worker can run it.
    waiting_for: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class ExperimentPage(BaseModel):
    items: list[ExperimentRead]
    total: int
    limit: int
    offset: int


class MetricRead(BaseModel):
    epoch: int
    values: dict[str, float | None]
    created_at: datetime


def trial_name(experiment_id: int, number: int | None) -> str | None:
    """How users name a trial: EXPERIMENT/NUMBER, e.g. 1/17 (ids are the API's)."""
    return None if number is None else f"{experiment_id}/{number}"


class TrialRead(BaseModel):
    id: int
    experiment_id: int
    number: int | None  # None while an enqueued trial waits for its first start
    state: str
    params: dict[str, Any]
    value: float | None  # the (first) objective's value
    values: list[float] | None  # every objective's value, in spec order
    best_epoch: int | None
    last_epoch: int
    attempt: int
    retries: int
    resumed_from: int
    worker_id: int | None
    failure_reason: str | None
    failure_message: str | None
    has_weights: bool
    has_outputs: bool = False  # a program's files, GET /trials/{id}/outputs
    created_at: datetime
    started_at: datetime | None  # when its latest attempt started
    finished_at: datetime | None
    # Its last reported epoch's metrics: in trial lists (pages, the best), None elsewhere.
    last_metrics: dict[str, float | None] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str | None:
        """EXPERIMENT/NUMBER, as users name it; None until an enqueued trial first starts."""
        return trial_name(self.experiment_id, self.number)


class TrialDetail(TrialRead):
    # Every hyperparameter the trial trained with: its params, the spec's fixed values, defaults.
    config: dict[str, Any]
    metrics: list[MetricRead]
    # A program's trial: the tail of its output (stdout and stderr) when it last ended.
    output: str | None = None


class TrialPage(BaseModel):
    items: list[TrialRead]
    total: int
    limit: int
    offset: int


class Curve(BaseModel):
    trial_id: int
    name: str
    state: str
    epochs: list[int]
    values: list[float | None]


class CurveSet(BaseModel):
    metric: str
    curves: list[Curve]  # in the order the trials were asked for


class OptunaTrial(BaseModel):
    number: int
    state: str  # optuna.trial.TrialState: RUNNING, COMPLETE, PRUNED, FAIL
    params: dict[str, Any]
    distributions: dict[str, str]  # optuna.distributions.distribution_to_json
    values: list[float] | None
    intermediate_values: dict[str, float]  # epoch -> the (first) objective
    datetime_start: datetime | None
    datetime_complete: datetime | None
    user_attrs: dict[str, Any]


class OptunaStudy(BaseModel):
    study_name: str
    directions: list[Literal["minimize", "maximize"]]
    metric_names: list[str]
    trials: list[OptunaTrial]


class DatasetRead(BaseModel):
    id: int
    project: str
    name: str
    sha256: str  # of the arrays' content: what workers cache it by
    format: str
    task: str
    n_samples: int
    n_features: int
    input_shape: list[int]
    classes: list[Any] | None  # class labels in index order
    target: str | None
    size: int
    created_at: datetime


class Me(BaseModel):
    role: str
    project: str | None  # None: every project
    can_control: bool


class BestTrials(BaseModel):
    metric: str
    direction: str
    objectives: list[dict[str, str]]
    # With several objectives: the Pareto front (no trial in it is beaten on every objective).
    pareto_front: bool
    trials: list[TrialRead]


class WorkerRegister(Strict):
    name: Name
    hostname: Annotated[StrictStr, Field(max_length=255), NoNul] = ""
    device: Annotated[StrictStr, Field(min_length=1, max_length=64), NoNul] = "cpu"
    pid: Annotated[StrictInt, Field(ge=0, le=MAX_INT)] | None = None
    device_memory_gb: float | None = Field(None, ge=0, le=100_000)  # a GPU's total memory
    # The plugin models and datasets installed where it runs (bundled ones everyone has).
    models: list[Key] = Field(default_factory=list, max_length=1000)
    datasets: list[Key] = Field(default_factory=list, max_length=1000)
    # The programs it runs (sweep worker --program, or the sweep.programs entry points).
    programs: list[ProgramName] = Field(default_factory=list, max_length=1000)
    gpus: StrictInt = Field(0, ge=0, le=1024)  # the GPUs one of its trials may use


class WorkerRead(BaseModel):
    id: int
    name: str
    hostname: str
    device: str
    pid: int | None
    device_memory_gb: float | None
    models: list[str]
    datasets: list[str]
    programs: list[str]
    gpus: int
    created_at: datetime
    last_seen_at: datetime


class ClaimRequest(Strict):
    # Seconds the server may hold the request open waiting for work (long poll).
    wait_seconds: float = Field(0.0, ge=0, le=3600)
    experiment_id: Id | None = None
    # This worker's running trials whose training ended: it still sends their models and
    # results, and they hold no slot of max_concurrent from now on.
    finishing: list[Id] = Field(default_factory=list, max_length=16)


class Score(BaseModel):
    """The objectives' values an epoch reported, in spec order."""

    epoch: int
    values: list[float]


class Assignment(BaseModel):
    """What a worker needs to run one trial."""

    trial_id: int
    experiment_id: int
    number: int
    attempt: int
    # Goes with every call about this attempt; a newer attempt makes it stale (409).
    token: str
    # Heartbeat well within this, or the trial is handed to another worker.
    lease_seconds: float
    # How often the worker sends a heartbeat between reports (a fraction of the lease).
    heartbeat_seconds: float
    # An earlier attempt left a checkpoint after this epoch: resume from it (0: start over).
    resume_epoch: int
    # A program's name, or the catalog model and dataset the built-in trainer trains.
    program: str | None = None
    model: str | None = None
    dataset: dict[str, Any] | None = None
    objective: dict[str, Any]
    # Every objective, in spec order (the first is `objective`).
    objectives: list[dict[str, Any]]
    params: dict[str, Any]
    # What the trial runs with: for a model, every hyperparameter resolved; for a program,
    # its params merged with the spec's fixed values.
    config: dict[str, Any]
    processes: int = 1  # a program's processes per trial
    trial_timeout_s: float | None = None
    # A program's resumed attempt: the objectives of the reports kept from earlier ones.
    resumed_scores: list[Score] = Field(default_factory=list)
    # Under `artifacts.keep_models: K` with one objective: whether any model is kept (K = 0
    # keeps none), and the value to beat, the K-th best kept model's as the trial starts
    # (None: any). A model that does not beat it cannot be among the K: it is not sent.
    send_model: bool = True
    model_bar: float | None = None
    # Whether the worker claims its next trial as this one's training ends, before it tells
    # this one's end (naming it as finishing): true where the experiment's suggestions are
    # asked ahead anyway (SWEEP_ASK_AHEAD_AFTER trials on). Below that, the next suggestion
    # waits for this trial's result, as a sequential search expects.
    claim_before_end: bool = False


class ReportIn(Strict):
    epoch: StrictInt = Field(ge=1, le=1_000_000)
    metrics: dict[Key, float] = Field(max_length=100)


class HeartbeatOut(BaseModel):
    action: Literal["continue", "stop"]
    reason: str | None = None


class ReportOut(BaseModel):
    action: Literal["continue", "prune", "stop"]
    reason: str | None = None


# The tail of a program's output, sent with its end.
Output = Annotated[StrictStr, Field(max_length=OUTPUT_LIMIT), NoNul]


class CompleteIn(Strict):
    value: float
    epoch: StrictInt | None = Field(None, ge=1, le=1_000_000)
    output: Output | None = None

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value


class ReleaseIn(Strict):
    """Why a worker gives its attempt back: it is shutting down (preempted; not a retry), or
    the trial's program was killed by something else than the worker (killed; a retry)."""

    reason: Literal["preempted", "killed"] = "preempted"
    message: Annotated[StrictStr, Field(max_length=20_000), NoNul] = ""


Sha256Hex = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
TrialArtifactKind = Literal["weights", "checkpoint", "outputs"]


class DirectUploadIn(Strict):
    """An artifact a worker would send straight to the store (S3), without the API between."""

    kind: TrialArtifactKind
    sha256: Sha256Hex
    size: StrictInt = Field(ge=1)
    epoch: StrictInt | None = Field(None, ge=1, le=1_000_000)  # a checkpoint's


class DirectUploadOut(BaseModel):
    """Where to PUT the bytes (with these headers), then commit `key`; no URL: the store takes
    no direct uploads, PUT them through the API instead."""

    url: str | None = None
    key: str | None = None
    headers: dict[str, str] = {}


class DirectCommitIn(DirectUploadIn):
    key: Annotated[StrictStr, Field(min_length=1, max_length=400)]


class FailIn(Strict):
    reason: Literal["diverged", "oom", "error", "interrupted"]
    message: Annotated[StrictStr, Field(max_length=20_000), NoNul] = ""
    output: Output | None = None


Project = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


WebhookEvent = Literal["experiment.ended", "experiment.failed", "trial.failed", "trial.new_best"]


class WebhookCreate(Strict):
    url: Annotated[StrictStr, Field(max_length=2000, pattern=r"^https?://[^\s/]+\S*$")]
    # The project whose events it gets; the calling admin's own when theirs is one.
    project: Project = "default"
    events: list[WebhookEvent] | None = Field(None, min_length=1)  # None: every event


class WebhookRead(BaseModel):
    id: int
    project: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookRead):
    secret: str  # signs each delivery (X-Sweep-Signature); shown in this answer only


class WebhookDeliveryRead(BaseModel):
    id: int
    webhook_id: int
    event: str
    payload: dict[str, Any]
    state: str  # pending, delivered, failed (after its last attempt)
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class TokenCreate(Strict):
    name: Name = "token"
    role: Literal["admin", "user", "viewer", "worker"]
    # The project the token is confined to; admins see all, workers without one serve all.
    project: Project | None = None


class TokenRead(BaseModel):
    id: int
    name: str
    prefix: str
    role: str
    project: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str  # shown this once; only its hash is kept
