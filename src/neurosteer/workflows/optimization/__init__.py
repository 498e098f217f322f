"""Find the circuit and multiplier that remove a behaviour at least cost.

    result = neurosteer.optimize(model, tokenizer, harmful, benign,
                                 config=OptimizeConfig(trials=60), run_dir="search")
    result.pareto            # frozen TrialResults: refusal, degenerate, KL, k, m, sign, ...
    export_circuit("search", "best.circuit", target=0.1)

    config      OptimizeConfig: budget, split, judge, answer length, KL measure, sampler
    space       the search space (k, m, sign rule, score, first layer) and the circuit of a trial
    split       held-out prompts, disjoint from the discovery prompts
    objectives  refusal + degenerate on held-out positives, KL on held-out negatives; pruning
    store       the run folder (optimize.json, study.db, table, reference, baselines)
    study       the Optuna study: storage, resume after a kill, trials as plain data, the front
    trials      one trial: ask a point, build its circuit, measure, tell; the progress bar
    baselines   CAA and directional ablation measured on the same terms (cached)
    run         optimize(): the stages in order; read_search(): a folder's result, no model
    export      the export rule and the circuit file with its multiplier and provenance

Needs Optuna (`pip install 'neurosteer[optimize]'`). See docs/optimize.md.
"""

from neurosteer.workflows.optimization.baselines import BaselinePoint
from neurosteer.workflows.optimization.config import OptimizeConfig
from neurosteer.workflows.optimization.export import DEFAULT_TARGET, choose_trial, export_circuit
from neurosteer.workflows.optimization.run import SearchResult, optimize, read_search
from neurosteer.workflows.optimization.space import Params, SearchSpace, build_circuit
from neurosteer.workflows.optimization.split import Split, split_prompts
from neurosteer.workflows.optimization.study import TrialResult, pareto_front

__all__ = [
    "DEFAULT_TARGET",
    "BaselinePoint",
    "OptimizeConfig",
    "Params",
    "SearchResult",
    "SearchSpace",
    "Split",
    "TrialResult",
    "build_circuit",
    "choose_trial",
    "export_circuit",
    "optimize",
    "pareto_front",
    "read_search",
    "split_prompts",
]
