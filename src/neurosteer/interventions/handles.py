"""The undo of an in-place weight edit, and the check that the weights can be edited at all.

Every exact edit (a circuit's bake, a direction ablation's bake, `save_baked`) keeps what it
overwrote in a `BakeHandle` and checks `require_editable` before it changes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from neurosteer._compat import deprecated_name
from neurosteer.errors import InputError


class BakeHandle:
    """Undo for in-place weight edits: it keeps what was there, never divides by m."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        """Deprecated (removed in the next release): whether there is anything to undo."""
        deprecated_name("BakeHandle.active", "call undo(), which is idempotent")
        return bool(self._steps)

    def on_undo(self, step: Callable[[], None]) -> None:
        """Register a restoring step; steps run in reverse order of registration."""
        self._steps.append(step)

    def keep_slice(self, weight: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        """Save `weight`'s slices `index` along `axis` for undo; returns a copy of them."""
        original = weight.index_select(axis, index).clone()

        def restore() -> None:
            weight.index_copy_(axis, index, original)

        self.on_undo(restore)
        return original

    def undo(self) -> None:
        """Restore the original weights exactly (idempotent)."""
        with torch.no_grad():
            while self._steps:
                self._steps.pop()()


def require_editable(model: nn.Module, modules: Iterable[nn.Module], action: str) -> None:
    """Refuse, before anything changes, if any parameter of `modules` is offloaded.

    An offloaded parameter (accelerate's `device_map` with CPU/disk offload, `cpu_offload`) is
    a placeholder on the meta device, or is swapped in by a hook only during the forward pass,
    so an in-place edit would be lost (and a saved checkpoint would hold the unedited values).

    Args:
        model: the model, used to name the parameters in the message.
        modules: the modules whose parameters (recursively) are to be edited or saved.
        action: what was asked for, for the message (e.g. "bake the circuit").

    Raises:
        InputError: naming the first offloaded parameter and what to do instead.
    """
    names = {id(m): name for name, m in model.named_modules()}
    offloaded: list[str] = []
    for top in modules:
        for sub_name, module in top.named_modules(prefix=names.get(id(top), "")):
            hooked = _offloaded_by_hook(module)
            for name, tensor in module.named_parameters(recurse=False):
                if hooked or tensor.device.type == "meta":
                    offloaded.append(f"{sub_name}.{name}" if sub_name else name)
    if offloaded:
        more = f" (and {len(offloaded) - 1} more)" if len(offloaded) > 1 else ""
        raise InputError(
            f"cannot {action}: '{offloaded[0]}'{more} is offloaded (accelerate keeps its values "
            "on the CPU or disk and only a placeholder in the model), so an in-place edit would "
            "change nothing; load the model without a device map or offloading (device_map=None, "
            "or no --device-map/--max-memory/--offload-folder), or bake a saved safetensors "
            "checkpoint shard by shard with bake_streaming (neurosteer bake --streaming)"
        )


def _offloaded_by_hook(module: nn.Module) -> bool:
    """Whether an accelerate hook on `module` swaps its weights in and out (offload=True)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return False
    hooks = getattr(hook, "hooks", None) or [hook]  # a SequentialHook holds several
    return any(bool(getattr(h, "offload", False)) for h in hooks)
