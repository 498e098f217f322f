"""The generic MoE rule: a family named nowhere resolves from its module tree (fused experts
through transformers' ExpertsInterface, or one module per expert), and one that cannot be
resolved is refused in one line that says what was missing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.integrations.moe import use_experts_implementation

from neurosteer import UnsupportedModelError, resolve_layout
from neurosteer.hooks import EditState, HookSet
from neurosteer.interventions.handles import BakeHandle
from neurosteer.methods.moe_sites import add_moe_recorders, bake_moe, moe_installer

H, W, E = 6, 5, 3


@use_experts_implementation(is_transposed=True, has_bias=True)
class _FusedExperts(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.num_experts = E
        self.gate_up_proj = nn.Parameter(torch.randn(E, H, 2 * W))
        self.gate_up_proj_bias = nn.Parameter(torch.randn(E, 2 * W))
        self.down_proj = nn.Parameter(torch.randn(E, W, H))
        self.down_proj_bias = nn.Parameter(torch.randn(E, H))
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in range(E):
            rows, slot = torch.where(index == e)
            gate, up = (x[rows] @ self.gate_up_proj[e] + self.gate_up_proj_bias[e]).chunk(2, -1)
            y = (self.act_fn(gate) * up) @ self.down_proj[e] + self.down_proj_bias[e]
            out.index_add_(0, rows, y * weights[rows, slot, None])
        return out


class _Expert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.proj_out = nn.Linear(H, W), nn.Linear(W, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(torch.relu(self.up(x)))


class _Moe(nn.Module):
    def __init__(self, config: PretrainedConfig, fused: bool) -> None:
        super().__init__()
        self.router = nn.Linear(H, E)
        self.experts = (
            _FusedExperts(config) if fused else nn.ModuleList(_Expert() for _ in range(E))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, H)
        weights, index = self.router(flat).softmax(-1).topk(2, dim=-1)
        if isinstance(self.experts, nn.ModuleList):
            out = torch.zeros_like(flat)
            for e, expert in enumerate(self.experts):
                rows, slot = torch.where(index == e)
                out.index_add_(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        else:
            out = self.experts(flat, index, weights)
        return out.reshape(x.shape)


class _Block(nn.Module):
    def __init__(self, config: PretrainedConfig, fused: bool) -> None:
        super().__init__()
        self.ffn = _Moe(config, fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class _Unnamed(nn.Module):
    """A model type no code names: decoder blocks whose `ffn` holds a router and experts."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.config = PretrainedConfig(num_hidden_layers=2, hidden_size=H)
        self.config._experts_implementation = "eager"
        self.blocks = nn.ModuleList(_Block(self.config, fused) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _State:
    def __init__(self, strength: float) -> None:
        self.strength = strength

    def steered_range(self, seq_len: int) -> tuple[int, int]:
        return 0, seq_len


@pytest.mark.parametrize("fused", [True, False])
def test_an_unnamed_moe_family_resolves_and_hook_equals_bake(fused: bool) -> None:
    torch.manual_seed(0)
    model = _Unnamed(fused).eval()
    layout = resolve_layout(model)
    assert layout.moe is not None
    part = layout.moe.layers[1].blocks[0]
    assert (part.path, part.n_experts, part.width) == ("ffn.experts", E, W)
    assert part.storage == ("fused" if fused else "modules")
    x = torch.randn(2, 4, H)
    by_layer = {0: torch.tensor([1, W + 3, 2 * W]), 1: torch.tensor([4])}
    state: EditState = _State(0.0)
    with torch.no_grad():
        base = model(x)
        with HookSet() as hooks:
            moe_installer(model, layout, by_layer)(hooks, state)
            hooked = model(x)
        handle = BakeHandle()
        bake_moe(handle, model, layout, by_layer, 0.0)
        baked = model(x)
        handle.undo()
        torch.testing.assert_close(baked, hooked, rtol=1e-5, atol=1e-5)
        assert (hooked - base).abs().max() > 1e-3
        assert torch.equal(model(x), base)


def test_experts_as_modules_refuse_last_token_recording_by_name() -> None:
    model = _Unnamed(fused=False)
    layout = resolve_layout(model)
    with HookSet() as hooks, pytest.raises(UnsupportedModelError, match=r"blocks\.0\.ffn\.experts"):
        add_moe_recorders(hooks, model, layout, lambda: torch.zeros(1), lambda *_: None)


def test_experts_without_weights_are_refused_in_one_line() -> None:
    model = _Unnamed(fused=True)
    for block in model.blocks:
        block.ffn.experts = nn.Identity()  # an experts module with no down projection
    with pytest.raises(UnsupportedModelError) as err:
        resolve_layout(model)
    message = str(err.value)
    assert "ffn.experts" in message
    assert "down_proj" in message
    assert "\n" not in message
