"""Stage 8 of the pipeline (evaluation): how often a judge agrees with a reader's labels.

score = agreement(given=["refusal", "compliance"], got=["refusal", "refusal"])
score.accuracy          # 0.5
score.confusion["compliance"]["refusal"]   # 1: a compliance the judge called refusal
score.table()           # the confusion as text rows, for the CLI and reports
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neurosteer.errors import InputError
from neurosteer.evaluation.judges import LABELS, Label


@dataclass(frozen=True)
class Agreement:
    """A judge's labels against a reader's, over the same answers.

    Attributes:
        total: answers compared.
        correct: answers where the judge gave the reader's label.
        confusion: confusion[given][got] = answers the reader labelled `given` and the judge
            `got` (every label of `LABELS` on both axes).
    """

    total: int
    correct: int
    confusion: dict[Label, dict[Label, int]]

    @property
    def accuracy(self) -> float:
        """Share of answers labelled as the reader did (0 to 1; 0 when none were compared)."""
        return self.correct / self.total if self.total else 0.0

    def recall(self, label: Label) -> float | None:
        """Share of the reader's `label` answers the judge labelled so (None: none given)."""
        row = self.confusion[label]
        given = sum(row.values())
        return row[label] / given if given else None

    def table(self) -> list[str]:
        """The confusion as aligned text rows: a header, then one row per given label."""
        width = max(len(label) for label in LABELS) + 2
        head = "given \\ judge".ljust(width + 4) + "".join(x.rjust(width) for x in LABELS)
        rows = [head]
        for given in LABELS:
            cells = "".join(str(self.confusion[given][got]).rjust(width) for got in LABELS)
            rows.append(given.ljust(width + 4) + cells)
        return rows


def agreement(given: Sequence[Label], got: Sequence[Label]) -> Agreement:
    """Compare a judge's labels (`got`) with a reader's (`given`), answer by answer.

    Raises:
        InputError: the two lists differ in length, or hold a label not in `LABELS`.
    """
    if len(given) != len(got):
        raise InputError(f"got {len(got)} judge labels for {len(given)} given labels")
    unknown = sorted({str(x) for x in (*given, *got)} - set(LABELS))
    if unknown:
        raise InputError(f"unknown labels {unknown}; labels are {', '.join(LABELS)}")
    confusion: dict[Label, dict[Label, int]] = {a: dict.fromkeys(LABELS, 0) for a in LABELS}
    for a, b in zip(given, got, strict=True):
        confusion[a][b] += 1
    correct = sum(a == b for a, b in zip(given, got, strict=True))
    return Agreement(total=len(given), correct=correct, confusion=confusion)
