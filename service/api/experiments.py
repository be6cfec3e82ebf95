import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from pydantic import Field

from sweep.service import experiments, trial_table, trials
from sweep.service.api.deps import (
    CONTROL,
    READ,
    CallerDep,
    Controller,
    DatabaseDep,
    ExperimentDep,
    ExperimentId,
    MetricsDep,
    OptimizerDep,
    PlotsDep,
    Reader,
    SessionDep,
    SettingsDep,
    SubmissionsDep,
)
from sweep.service.claims import until_gone
from sweep.service.schemas import (
    MAX_INT,
    BestTrials,
    CurveSet,
    ExperimentChange,
    ExperimentCreate,
    ExperimentPage,
    ExperimentRead,
    Importance,
    OptunaStudy,
    TrialDetail,
    TrialEnqueue,
    TrialPage,
    TrialRead,
)
from sweep.service.search import interop, plots
from sweep.service.states import ExperimentState, TrialState

router = APIRouter(prefix="/experiments", tags=["experiments"])

Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=MAX_INT)]
MAX_WAIT_SECONDS = 60


async def until_ended(
    experiment_id: ExperimentId,
    db: DatabaseDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    request: Request,
    caller: CallerDep,  # let in by the route's decision, before this runs
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="hold the answer up to this many seconds, until the experiment ends",
        ),
    ] = 0,
) -> None:
    """Before the request's transaction begins: a waiting request holds none. A client that
    hangs up stops the wait."""
    if wait > 0:
        poll = settings.claim_poll_seconds
        ended = experiments.until_ended(db, experiment_id, caller.project, wait, poll)
        waits = {asyncio.ensure_future(ended), asyncio.ensure_future(until_gone(request.receive))}
        try:
            with metrics.waiting_for_end.track_inprogress():
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": ExperimentRead, "description": "an earlier submission with this key"},
        429: {"description": "over SWEEP_MAX_SUBMISSIONS_PER_MINUTE for this token"},
    },
)
def create_experiment(
    spec: ExperimentCreate,
    session: SessionDep,
    caller: Controller,
    submissions: SubmissionsDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="the same key (in the same project) submits once: sent again, it "
            "answers the experiment it made (200, Idempotent-Replayed: true)",
        ),
    ] = None,
) -> ExperimentRead:
    """Submit an experiment; trials start as soon as a worker claims."""
    submissions.check(caller.token_id)
    project = caller.project_for(spec.project)
    submitted, replayed = experiments.submit(
        session, spec=spec, project=project, idempotency_key=idempotency_key
    )
    if replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return submitted


@router.get("")
def list_experiments(
    session: SessionDep,
    caller: Reader,
    state: ExperimentState | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ExperimentPage:
    """Experiments, newest first."""
    return experiments.page(
        session, project=caller.project, state=state, limit=limit, offset=offset
    )


@router.get("/{experiment_id}", dependencies=[READ, Depends(until_ended)])
def get_experiment(experiment: ExperimentDep, session: SessionDep) -> ExperimentRead:
    """An experiment's spec, state, trial counts and best value; with `wait`, once it has
    ended or after that many seconds (a long poll: no need to ask again and again)."""
    return experiments.status(session, experiment)


@router.patch("/{experiment_id}", dependencies=[CONTROL])
def change_experiment(
    experiment: ExperimentDep, change: ExperimentChange, session: SessionDep
) -> ExperimentRead:
    """Raise or lower budget.n_trials and budget.max_concurrent; the next claim goes by them."""
    return experiments.change_budget(session, experiment.id, change.budget)


@router.post("/{experiment_id}/pause", dependencies=[CONTROL])
def pause_experiment(experiment: ExperimentDep, session: SessionDep) -> ExperimentRead:
    """Stop handing out new trials; running ones go on."""
    return experiments.pause(session, experiment.id)


@router.post("/{experiment_id}/resume", dependencies=[CONTROL])
def resume_experiment(experiment: ExperimentDep, session: SessionDep) -> ExperimentRead:
    """Hand out trials again."""
    return experiments.resume(session, experiment.id)


@router.post("/{experiment_id}/cancel", dependencies=[CONTROL])
def cancel_experiment(experiment: ExperimentDep, session: SessionDep) -> ExperimentRead:
    """End the experiment; running trials are told to stop at their next report."""
    return experiments.cancel(session, experiment.id)


@router.delete("/{experiment_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[CONTROL])
def delete_experiment(
    experiment: ExperimentDep, session: SessionDep, optimizer: OptimizerDep
) -> Response:
    """Delete an experiment with all its trials, metrics and weights."""
    experiment_id = experiment.id
    experiments.remove(session, experiment_id, lambda: optimizer.forget(experiment_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{experiment_id}/trials", dependencies=[READ])
def list_trials(
    experiment: ExperimentDep,
    session: SessionDep,
    state: TrialState | None = None,
    sort: Annotated[
        str,
        Query(
            max_length=200,
            description="number, objective (best first unless order says), param:NAME, or "
            "metric:NAME (its value at the trial's last reported epoch)",
        ),
    ] = "number",
    order: Literal["asc", "desc"] | None = None,
    where: Annotated[
        list[str],
        Query(
            max_length=50,
            description="filters on parameters, all of which hold: NAME>=X, NAME<=X, NAME=X "
            "(lr>=0.001, optimizer=adam)",
        ),
    ] = [],  # noqa: B006 - FastAPI copies a query default
    limit: Limit = 100,
    offset: Offset = 0,
) -> TrialPage:
    """An experiment's trials, paged, filtered and sorted in SQL, each with its last reported
    metrics."""
    return trials.page(
        session,
        experiment=experiment,
        state=state,
        sort=sort,
        order=order,
        where=where,
        limit=limit,
        offset=offset,
    )


@router.get("/{experiment_id}/curves", dependencies=[READ])
def trial_curves(
    experiment: ExperimentDep,
    session: SessionDep,
    metric: Annotated[str, Query(min_length=1, max_length=64)],
    trial: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_INT)]],
        Query(min_length=1, max_length=50, description="trial numbers (1/17: 17)"),
    ],
    max_points: Annotated[int, Query(ge=2, le=10_000)] = 500,
) -> CurveSet:
    """One metric per epoch for each of the trials named, to overlay them: at most
    max_points points per trial (evenly spaced epochs, the last one kept)."""
    return trial_table.curves(session, experiment, metric, trial, max_points)


@router.get("/{experiment_id}/trials/{number}", dependencies=[READ])
def get_trial_by_number(
    experiment: ExperimentDep, number: Annotated[int, Path(ge=0, le=MAX_INT)], session: SessionDep
) -> TrialDetail:
    """The trial users name EXPERIMENT/NUMBER (1/17): as GET /trials/{id} answers it."""
    return trials.by_number(session, experiment, number)


@router.post("/{experiment_id}/trials", status_code=status.HTTP_201_CREATED, dependencies=[CONTROL])
def enqueue_trial(experiment: ExperimentDep, body: TrialEnqueue, session: SessionDep) -> TrialRead:
    """Queue a trial with fixed params (all or some; the sampler picks the rest). Queued
    trials run before the sampler's suggestions and count toward n_trials."""
    return trials.enqueue(session, experiment.id, body.params)


@router.get(
    "/{experiment_id}/importance",
    dependencies=[READ],
    responses={409: {"description": "too few completed trials to tell"}},
)
def parameter_importance(
    experiment: ExperimentDep,
    session: SessionDep,
    optimizer: OptimizerDep,
    evaluator: Literal["fanova", "mean_decrease_impurity", "ped_anova"] = "fanova",
) -> Importance:
    """How much each parameter explains the objective, over the completed trials."""
    return optimizer.importance(session, experiment, evaluator)


@router.get("/{experiment_id}/study", dependencies=[READ])
def optuna_study(
    experiment: ExperimentDep, session: SessionDep, optimizer: OptimizerDep
) -> OptunaStudy:
    """Every trial as an Optuna study holds it (params with distributions, values, the
    objective per epoch, state), for `optuna.trial.FrozenTrial`s on the client."""
    return interop.study(session, optimizer, experiment)


@router.get("/{experiment_id}/plots", dependencies=[READ])
def plots_not_ready(
    experiment: ExperimentDep, session: SessionDep, drawn: PlotsDep
) -> dict[str, str]:
    """The plots that cannot be drawn yet (too few trials, one objective...), each with why."""
    return drawn.available(session, experiment)


@router.get(
    "/{experiment_id}/plots/{kind}",
    dependencies=[READ],
    response_class=Response,
    responses={
        200: {"content": {"application/json": {}}, "description": "a plotly figure"},
        409: {"description": "nothing to plot yet (GET .../plots says why)"},
    },
)
def plot(
    experiment: ExperimentDep, session: SessionDep, drawn: PlotsDep, kind: plots.PlotKind
) -> Response:
    """A plot of the experiment as a plotly figure (JSON): Optuna's optimization history,
    intermediate values, parallel coordinates, parameter importance, slice, contour of the two
    most important parameters, Pareto front; or a timeline of trials per worker. Beyond 1,000
    completed trials, the trial plots draw the 100 best and a fixed random sample of the
    others, and the learning curves the 100 best over a band of all (layout.meta.note says
    so). Figures are kept until the experiment changes (a running one's: a few seconds)."""
    return Response(drawn.figure(session, experiment, kind), media_type="application/json")


@router.get("/{experiment_id}/best", dependencies=[READ])
def best_trials(
    experiment: ExperimentDep, session: SessionDep, k: Annotated[int, Query(ge=1, le=1000)] = 1
) -> BestTrials:
    """The k best completed trials, best first."""
    return trials.best(session, experiment=experiment, k=k)
