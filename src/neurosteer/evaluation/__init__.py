"""Evaluation of a steered model.

    quality       distinct-4 per answer and averaged, and the degeneration flag
    answer_text   what a judge reads: the final answer after reasoning, without quoted speech
    refusal_clauses  the built-in refusal clauses (first-person declines) and their exceptions
    phrases       refusal phrase lists: built in ("strict", "sweep", "patterns") or from JSON
    judges        the `Judge` interface, the phrase judge, refusal rates (a judge by name:
                  `neurosteer.workflows.judges`)
    refusal       measure_refusal: greedy answers under a steering, judged and counted (the one
                  path every refusal number takes: sweeps, layer scans, the organism demo)
    model_judge   a local causal LM as a yes/no judge; judge prompts from JSON
    judge_cache   the model judge's model, loaded once per process, and its cached verdicts
    model_judge_names  "model", "model:PATH", "model#ENTRY": the model judges `get_judge` makes
    answer_records  answers to judge from JSONL/CSV (`neurosteer judge FILE`)
    judge_scores  a judge's agreement with a reader's labels: accuracy, confusion, recall
    kl            KL(unsteered || steered) on the unsteered model's own continuations
    datasets      benchmark prompt sets (JailbreakBench, AdvBench, HarmBench, JSON splits, .txt)
    mmlu          MMLU accuracy through lm-eval (extra `neurosteer[eval]`) from local csv files

Every judge labels each answer "refusal", "compliance" or "degenerate"; degenerate text is
never counted as compliance.

    answers = neurosteer.generate(model, tokenizer, harmful, max_new_tokens=150)
    labels = PhraseJudge()(harmful, answers)
    refusal_rates(labels), quality(answers).mean_distinct4
"""

from neurosteer._compat import moved_names
from neurosteer.evaluation.datasets import load_dataset_prompts
from neurosteer.evaluation.judges import (
    LABELS,
    Judge,
    Label,
    PhraseJudge,
    refusal_rates,
)
from neurosteer.evaluation.kl import KLReport, kl_to_reference
from neurosteer.evaluation.mmlu import (
    MMLUResult,
    MMLUSweep,
    mmlu_accuracy,
    mmlu_sweep,
    paired_difference,
)
from neurosteer.evaluation.mmlu_data import MMLUData, MMLUQuestion, load_mmlu
from neurosteer.evaluation.model_judge import (
    JudgePrompt,
    ModelJudge,
    answer_token_ids,
    load_judge_prompt,
)
from neurosteer.evaluation.phrases import (
    BUILTIN_LISTS,
    PhraseList,
    builtin_list,
    load_phrase_list,
    load_phrase_lists,
)
from neurosteer.evaluation.quality import QualityReport, distinct_n, is_degenerate, quality
from neurosteer.evaluation.refusal import JudgedAnswers, judge_answers, measure_refusal
from neurosteer.interventions.protocol import Intervention

__all__ = [
    "BUILTIN_LISTS",
    "LABELS",
    "Intervention",
    "Judge",
    "JudgePrompt",
    "JudgedAnswers",
    "KLReport",
    "Label",
    "MMLUData",
    "MMLUQuestion",
    "MMLUResult",
    "MMLUSweep",
    "ModelJudge",
    "PhraseJudge",
    "PhraseList",
    "QualityReport",
    "answer_token_ids",
    "builtin_list",
    "distinct_n",
    "is_degenerate",
    "judge_answers",
    "kl_to_reference",
    "load_dataset_prompts",
    "load_judge_prompt",
    "load_mmlu",
    "load_phrase_list",
    "load_phrase_lists",
    "measure_refusal",
    "mmlu_accuracy",
    "mmlu_sweep",
    "paired_difference",
    "quality",
    "refusal_rates",
]


#: Old names of this package, kept one release (`neurosteer._compat.moved_names`).
__getattr__ = moved_names(__name__, {"get_judge": "neurosteer.workflows.judges"})
