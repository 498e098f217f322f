"""`neurosteer evaluate-gguf`: a baked GGUF file evaluated as users run it, and the lines
`bake` prints about how far each stored edit is from the exact one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from neurosteer.cli.options import (
    ModelSettings,
    load,
    model_options,
    template_option,
)
from neurosteer.cli.settings import settings_command
from neurosteer.errors import InputError
from neurosteer.prompts.rendering import Rendering

if TYPE_CHECKING:
    from neurosteer.export.gguf import ChangedTensor


def edit_fidelity(changed: Sequence[ChangedTensor]) -> list[str]:
    """One line per changed tensor: its neurons (and experts, for a stacked expert tensor), its
    types, and the stored edit's distance from the exact one (the neurons' values, the other
    values of their blocks, the rest of the tensor)."""
    lines = []
    for t in changed:
        e = t.error
        kind = "exact" if e.exact else f"APPROXIMATE, off by {e.relative:.1%} of the edit"
        where = f" in {t.experts} experts" if t.experts else ""
        lines.append(
            f"  {t.name}: {t.neurons} neurons{where}, {t.source_type} -> {t.stored_type} ({kind}; "
            f"largest error: neurons {e.neurons:.2e}, rest of their blocks {e.blocks:.2e}, "
            f"rest of the tensor {e.rest:.2e}; edit {e.edit:.2e})"
        )
    approximate = [t for t in changed if not t.error.exact]
    if approximate:
        worst = max(t.error.relative for t in approximate)
        kept = any(t.stored_type == t.source_type for t in approximate)
        how = (
            "they kept their own type (--gguf-keep-type)"
            if kept
            else f"the {approximate[0].stored_type} fallback holds it approximately"
        )
        lines.append(
            f"  {len(approximate)} of {len(changed)} tensors hold an approximate edit (worst "
            f"{worst:.1%} of the edit): {how}; the default (F16 fallback) stores it exactly"
        )
    return lines


@dataclass(frozen=True, kw_only=True)
class EvaluateGGUFSettings:
    """The options of `neurosteer evaluate-gguf`."""

    loading: ModelSettings
    baked: Path
    circuit_path: Path
    harmful: Path
    harmless: Path
    limit: int
    judge: str
    max_new_tokens: int
    kl_tokens: int
    batch_size: int
    template: Rendering


@click.command("evaluate-gguf")
@model_options
@click.option(
    "--baked",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The baked .gguf file (written by `bake` from MODEL).",
)
@click.option("--circuit", "circuit_path", type=click.Path(path_type=Path), required=True)
@click.option("--harmful", type=click.Path(path_type=Path), required=True)
@click.option("--harmless", type=click.Path(path_type=Path), required=True)
@click.option("--limit", type=int, default=16, show_default=True, help="Prompts from each set.")
@click.option(
    "--judge",
    default="sweep",
    show_default=True,
    help="Refusal judge (as in `sweep`); 'none' skips refusal (KL and logits only).",
)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--kl-tokens", type=int, default=16, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@template_option
@settings_command(EvaluateGGUFSettings)
def evaluate_gguf_command(settings: EvaluateGGUFSettings) -> None:
    """Evaluate the baked GGUF file as users run it (its own quantized values, dequantized)
    beside MODEL hooked with the circuit: refusal, KL, top-1 agreement and logit error."""
    from neurosteer.methods.circuit import Circuit
    from neurosteer.model.loading import load_model
    from neurosteer.prompts.files import load_prompts
    from neurosteer.workflows.baked_file import baked_multiplier, check_baked_file
    from neurosteer.workflows.judges import get_judge

    if settings.baked.suffix.lower() != ".gguf" or not settings.baked.is_file():
        raise InputError(f"--baked must be a .gguf file written by bake; got '{settings.baked}'")
    if settings.limit < 1:
        raise InputError(f"--limit must be at least 1, got {settings.limit}")
    circuit = Circuit.load(settings.circuit_path)
    multiplier = baked_multiplier(settings.baked, circuit)
    harmful = load_prompts(settings.harmful)[: settings.limit]
    harmless = load_prompts(settings.harmless)[: settings.limit]
    judge = None if settings.judge == "none" else get_judge(settings.judge)
    model, tokenizer, _ = load(settings.loading, circuit)
    file_model, _ = load_model(
        settings.baked, dtype=settings.loading.dtype, device=settings.loading.device
    )
    check = check_baked_file(
        model,
        file_model,
        tokenizer,
        circuit,
        multiplier,
        harmful=harmful,
        harmless=harmless,
        judge=judge,
        max_new_tokens=settings.max_new_tokens,
        kl_tokens=settings.kl_tokens,
        batch_size=settings.batch_size,
        template=asdict(settings.template),
    )
    a = check.agreement
    click.echo(
        f"multiplier {check.multiplier:g}, {len(harmful)} harmful and {len(harmless)} "
        "harmless prompts"
    )
    for name, side in (("hooked model", check.hooked), ("baked file", check.baked)):
        refusal = "-" if side.refusal is None else f"{side.refusal:.1%}"
        click.echo(f"  {name:<13} refusal {refusal:>6}   KL {side.kl:.4f} nats")
    click.echo(
        f"  the file against the hooks: top-1 agreement {a.top1:.1%} of {a.positions} "
        f"positions, largest logit error {a.max_logit_error:.3g}, KL {a.mean_kl:.2e} nats"
    )
