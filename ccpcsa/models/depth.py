"""Depth surgery: remove whole residual blocks (``prune.depth.drop_blocks``).

A residual block computes ``y = σ(x + F(x))``; removing it replaces ``y`` by ``x`` (an ``nn.Identity``), which is the
block with ``F ≡ 0`` (after a ReLU, ``σ(x) = x`` for the block's non-negative input). Residual networks degrade
gracefully when single blocks are removed (Veit, Wilber, Belongie, "Residual Networks Behave Like Ensembles of
Relatively Shallow Networks", NeurIPS 2016), and a short fine-tune recovers most of the rest. Channel pruning cannot
do this: it keeps at least one aligned block of channels per layer. On a CPU whose INT8 kernels run narrow layers
slowly (resnet20's 16-wide first stage on AVX-512 VNNI), a whole block of that stage buys more latency per
percentage point of accuracy than narrowing the later stages further (bench/README.md "Default deploy").

Only a module whose output has its input's shape can be removed (the identity must fit), and only one that carries its
own skip connection (:func:`carries_its_skip`: with its weights at zero it returns its input) — where the residual add
sits in the parent's forward (``x + self.block(x)``), an identity in the block's place would double the input instead
of skipping the branch. Blocks are named as in the plain model (``layer1.1``) and found through BAM wrappers
(``layer1`` → ``layer1.body``). The removal is recorded in the checkpoint's model entry
(:class:`ccpcsa.io.checkpoint.ModelSpec` ``dropped``), so the slim model is rebuilt from it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from ..placement import example_input


def _wrapper_body(module: nn.Module) -> nn.Module | None:
    """The wrapped module of a BAM wrapper (``WithAttention``), else None."""
    from .attention import WithAttention

    return module.body if isinstance(module, WithAttention) else None


def _unwrapped(module: nn.Module) -> nn.Module:
    """The block a BAM wrapper holds (its attention sits on the block's output), else ``module``."""
    body = _wrapper_body(module)
    return module if body is None else body


def resolve_block(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(parent, attribute)`` of the module ``name`` (dotted, as in the plain model), looking through BAM wrappers.

    Raises :class:`UserError` naming the missing part and the children that exist there."""
    if not isinstance(name, str) or not name.strip() or name.strip() != name:
        raise UserError(f"prune.depth.drop_blocks: {name!r} is not a module name (dotted, e.g. layer1.1)")
    parent: nn.Module = model
    parts = name.split(".")
    for i, part in enumerate(parts):
        children = dict(parent.named_children())
        body = _wrapper_body(parent)
        if part not in children and body is not None:
            parent, children = body, dict(body.named_children())
        if part not in children:
            where = ".".join(parts[:i]) or "the model"
            raise UserError(f"prune.depth.drop_blocks: {where} has no module '{part}' (it has: "
                            f"{', '.join(children) or 'none'}); name a residual block, e.g. layer1.1")
        if i == len(parts) - 1:
            return parent, part
        parent = children[part]
    raise AssertionError("unreachable")


def io_shapes(model: nn.Module, modules: dict[str, nn.Module],
              input_size: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shape of each of ``modules`` on one probe forward pass of ``model`` (missing: never called)."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for key, mod in modules.items():
        def hook(_m: nn.Module, args: tuple[object, ...], out: object, _k: str = key) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                shapes.setdefault(_k, (tuple(args[0].shape), tuple(out.shape)))
        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input(model, input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def carries_its_skip(module: nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether ``module`` holds its own residual sum: a copy of it in eval mode with every parameter and floating
    buffer set to zero maps a strictly positive random ``x`` of ``input_shape`` to ``x`` (``allclose``).

    A residual block ``y = σ(x + F(x))`` whose branch ``F`` is built of convolutions, BatchNorms and activations with
    ``act(0) = 0`` has ``F ≡ 0`` at zero weights, so ``y = σ(x) = x`` for ``x > 0`` (ReLU) and ``y = x`` without σ
    (a linear bottleneck): the identity is that block without its branch. A module with no skip of its own (a plain
    conv stack, or a branch whose add sits in the parent's forward) returns a constant at zero weights instead. A
    module that cannot be run that way counts as not carrying a skip. ``module`` itself is not changed."""
    try:
        probe = copy.deepcopy(module).eval()
        with torch.no_grad():
            floating = [t for t in itertools.chain(probe.parameters(), probe.buffers()) if t.is_floating_point()]
            for t in floating:
                t.zero_()
            x = torch.rand(tuple(input_shape), generator=torch.Generator().manual_seed(0)) + 0.5
            if floating:
                x = x.to(device=floating[0].device, dtype=floating[0].dtype)
            y = probe(x)
    except Exception:  # noqa: BLE001 — any module that cannot run on a zeroed copy is not verified as a skip
        return False
    return isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, x, rtol=1e-3, atol=1e-4)


def drop_blocks(model: nn.Module, names: Sequence[str], input_size: int = 32, verify_skip: bool = True) -> list[str]:
    """Replace each module of ``names`` in ``model`` by ``nn.Identity`` (in place) and return the names.

    Contract: every name resolves (:func:`resolve_block`), appears once, is not inside another named block, its
    module takes and returns one tensor of the same shape on a probe forward pass at ``input_size``, and (with
    ``verify_skip``) it carries its own skip connection (:func:`carries_its_skip`) — otherwise a :class:`UserError`
    names the block and why, and ``model`` is left unchanged. A checkpoint that records removed blocks rebuilds them
    with ``verify_skip=False``: it repeats a removal made (and checked) before."""
    names = list(names)
    if not names:
        return []
    if len(set(names)) != len(names):
        raise UserError(f"prune.depth.drop_blocks names a block twice: {names}")
    for a in names:
        for b in names:
            if a != b and b.startswith(a + "."):
                raise UserError(f"prune.depth.drop_blocks: {b} is inside {a}; name one of them")
    where = {n: resolve_block(model, n) for n in names}
    modules = {n: getattr(p, attr) for n, (p, attr) in where.items()}
    for n, m in modules.items():
        if isinstance(m, nn.Identity):
            raise UserError(f"prune.depth.drop_blocks: {n} is already an identity (removed before); remove it from the list")
    shapes = io_shapes(model, modules, input_size)
    for n in names:
        if n not in shapes:
            raise UserError(f"prune.depth.drop_blocks: {n} is not called with one tensor in the model's forward pass, so it "
                            "cannot be replaced by an identity; name a residual block")
        shape_in, shape_out = shapes[n]
        if shape_in != shape_out:
            raise UserError(f"prune.depth.drop_blocks: {n} maps {list(shape_in)} to {list(shape_out)}; only a block whose "
                            "output has its input's shape (no stride, no width change) can be removed")
        if verify_skip and not carries_its_skip(_unwrapped(modules[n]), shape_in):
            raise UserError(f"prune.depth.drop_blocks: {n} does not carry its own skip connection (with its weights at zero "
                            "it does not return its input; a residual add in its parent's forward is outside it), so "
                            "an identity in its place would not skip it; name a residual block whose forward adds its "
                            "input, e.g. layer1.1 of resnet20 (python -m bench.block_drop lists them)")
    for parent, attr in where.values():
        setattr(parent, attr, nn.Identity())
    return names


def candidate_blocks(model: nn.Module, input_size: int = 32) -> list[str]:
    """The modules :func:`drop_blocks` could remove, in execution order: children of an ``nn.Sequential`` (the way
    stages hold their blocks) that hold a convolution, return a tensor of their input's shape and carry their own
    skip connection (:func:`carries_its_skip`), named as in the plain model (BAM wrappers' ``body`` left out of the
    name)."""
    from .attention import WithAttention

    found: dict[str, nn.Module] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if isinstance(module, WithAttention) and name == "bam":
                continue
            plain = prefix if isinstance(module, WithAttention) else f"{prefix}{name}."
            if isinstance(module, nn.Sequential) and any(isinstance(m, nn.Conv2d) for m in child.modules()):
                found[plain.rstrip(".")] = child
            visit(child, plain)

    visit(model, "")
    shapes = io_shapes(model, found, input_size)
    return [n for n in found if n in shapes and shapes[n][0] == shapes[n][1]
            and carries_its_skip(_unwrapped(found[n]), shapes[n][0])]


def block_stages(model: nn.Module, names: Sequence[str], input_size: int = 32) -> dict[str, tuple[int, ...]]:
    """The stage of each block of ``names`` (:func:`candidate_blocks`): the shape of its input without the batch axis
    (channels, height, width) on one probe forward pass — the blocks between two downsamplings share it. A block that
    is never called is left out."""
    modules = {n: getattr(*resolve_block(model, n)) for n in names}
    return {n: tuple(shapes[0][1:]) for n, shapes in io_shapes(model, modules, input_size).items()}
