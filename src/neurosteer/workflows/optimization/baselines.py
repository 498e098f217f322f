"""The comparison: CAA and directional ablation on the search's own terms.

Both baselines are fitted once from the discovery prompts (residual-stream contrast vectors),
at one layer (`OptimizeConfig.baseline_layer`, else `ContrastVectors.default_layer()`), and
measured at each strength s of `baseline_strengths` by the same `Objectives` as the trials:
the same held-out prompts, judge, answer length and KL reference. CAA runs at α = −s, the
direction is removed by a share s (method.md §4's mapping, so s = 1 is each one's full
removal). The points are cached in RUN/baselines.json with the settings that made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.interventions.protocol import Bound, Intervention
from neurosteer.methods.baselines import CAA, DirectionAblation, contrast_vectors
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import runs_model
from neurosteer.workflows.optimization import store
from neurosteer.workflows.optimization.answers import append_answers, baseline_record
from neurosteer.workflows.optimization.config import OptimizeConfig
from neurosteer.workflows.optimization.objectives import Objectives
from neurosteer.workflows.optimization.split import Split

METHODS = ("caa", "direction")


@dataclass(frozen=True)
class BaselinePoint:
    """One baseline at one strength, measured like a trial.

    Attributes:
        method: "caa" or "direction".
        layer: the layer its vector comes from.
        s: the normalised strength; `strength` the method's own (α = −s, or the share s).
        refusal, degenerate, compliance, kl, kl_first_token, kl_mean: as in `Outcome`.
    """

    method: str
    layer: int
    s: float
    strength: float
    refusal: float
    degenerate: float
    compliance: float
    kl: float
    kl_first_token: float
    kl_mean: float | None

    @property
    def not_success(self) -> float:
        return self.refusal + self.degenerate


def baseline_settings(config: OptimizeConfig) -> dict[str, Any]:
    """What the cached points depend on beyond the search's identity."""
    return {"strengths": list(config.baseline_strengths), "layer": config.baseline_layer}


@runs_model
def measure_baselines(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[str],
    negative: Sequence[str],
    objectives: Objectives,
    config: OptimizeConfig,
    *,
    layout: ModelLayout,
    progress: bool = False,
    folder: Path | None = None,
) -> list[BaselinePoint]:
    """Fit CAA and directional ablation on the discovery prompts; measure each strength (its
    judged answers appended to the answers file of the run `folder`, if given)."""
    vectors = contrast_vectors(
        model,
        tokenizer,
        positive,
        negative,
        batch_size=config.batch_size,
        **config.rendering.as_kwargs(),
        layout=layout,
        progress=progress,
    )
    layer = vectors.checked_layer(config.baseline_layer)
    fitted: dict[str, Intervention] = {
        "caa": Bound(CAA.fit(vectors, layer=layer), layout=layout),
        "direction": Bound(DirectionAblation.fit(vectors, layer=layer), layout=layout),
    }
    points = []
    grid = [(m, s) for m in METHODS for s in config.baseline_strengths]
    for method, s in tqdm(grid, desc="baselines", disable=not progress, leave=False):
        strength = -s if method == "caa" else s
        outcome = objectives.measure(fitted[method], strength)
        # measured without pruning, so every share is there
        assert outcome.refusal is not None
        assert outcome.degenerate is not None
        assert outcome.compliance is not None
        if folder is not None and outcome.answers is not None:
            record = baseline_record(
                method, s, config.judge, config.max_new_tokens, outcome.answers
            )
            append_answers(folder, record)
        points.append(
            BaselinePoint(
                method=method,
                layer=layer,
                s=s,
                strength=strength,
                refusal=outcome.refusal,
                degenerate=outcome.degenerate,
                compliance=outcome.compliance,
                kl=outcome.kl,
                kl_first_token=outcome.kl_first_token,
                kl_mean=outcome.kl_mean,
            )
        )
    return points


def to_json(points: Sequence[BaselinePoint], config: OptimizeConfig) -> dict[str, Any]:
    return {"settings": baseline_settings(config), "points": [asdict(p) for p in points]}


def from_json(data: Any) -> list[BaselinePoint]:
    """The points of a `to_json` value ([] for None).

    Raises:
        InputError: `data` is not of `to_json`'s form.
    """
    if data is None:
        return []
    try:
        return [BaselinePoint(**p) for p in data["points"]]
    except (KeyError, TypeError) as err:
        raise InputError(f"not a list of baseline points ({err})") from None


def read_cached(folder: Path) -> tuple[dict[str, Any] | None, list[BaselinePoint]]:
    """The run folder's cached baselines: (their settings, their points); (None, []) when
    none are cached.

    Raises:
        InputError: baselines.json is damaged (the message says to delete it).
    """
    file = folder / store.BASELINES_FILE
    what = "the baselines"
    data = store.read_json(file, what)
    if data is None:
        return None, []
    try:
        points = from_json(data)
        settings = data["settings"]
    except (InputError, KeyError, TypeError):
        raise InputError(
            f"'{file}' does not hold baseline points of this neurosteer; delete it and the next "
            f"run measures {what} again"
        ) from None
    return settings, points


@runs_model
def cached_baselines(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    objectives: Objectives,
    config: OptimizeConfig,
    layout: ModelLayout,
    folder: Path | None,
    progress: bool,
) -> list[BaselinePoint]:
    """The baselines' points: cached in `folder` when their settings match, else measured now
    (and cached)."""
    if not config.baselines:
        return []
    settings, cached = (None, []) if folder is None else read_cached(folder)
    if settings is not None and settings == baseline_settings(config):
        return cached
    try:
        points = measure_baselines(
            model,
            tokenizer,
            split.positive,
            split.negative,
            objectives,
            config,
            layout=layout,
            progress=progress,
            folder=folder,
        )
    except InputError as err:
        raise InputError(f"the baseline comparison failed: {err} (or pass --no-baselines)") from err
    if folder is not None:
        store.write_json(folder / store.BASELINES_FILE, to_json(points, config))
    return points
