"""FSDP2 sharding of prismrl's models: one ``fully_shard`` unit per transformer block, then each model root.

Used by ``StageModule.configure_model`` under Lightning's ``ModelParallelStrategy`` (which builds the device mesh):

    trainer:
      strategy:
        class_path: lightning.pytorch.strategies.ModelParallelStrategy
        init_args: {data_parallel_size: auto, tensor_parallel_size: 1}

Wrap policy per model family: a block is a module whose class name is listed in an HF model's
``_no_split_modules`` (the layers HF itself never splits across devices): the decoder layers of causal LMs
(``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ...), VLMs' language and vision blocks (``Qwen2VLDecoderLayer``,
``Qwen2VLVisionBlock``), text and vision towers' encoder layers (``BertLayer``, ``CLIPEncoderLayer``,
``SiglipEncoderLayer``, ``ModernBertEncoderLayer``, ``WhisperEncoderLayer``). ``ShardingSettings.block_classes``
names them explicitly instead (an error before training when the model has none of a name).

After the blocks, every direct child of the stage that holds parameters (policy, reference, encoders, heads) is
sharded as a root of its own. LoRA: frozen base weights and trainable adapters live in the same units (FSDP2
supports mixed ``requires_grad``); the optimizer only sees the adapters. On GPUs the units compute in bf16 and
reduce gradients in fp32 (``MixedPrecisionPolicy``); CPU runs stay fp32.

Generation: HF ``generate`` runs one forward per token, and a sharded model would all-gather every block every
token (and deadlock when ranks stop at different lengths). ``gathered(module)`` unshards every unit once, keeps it
unsharded while the block runs (no collectives per token) and reshards after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from prismrl.choices import checkpoint_safe


@checkpoint_safe
@dataclass(frozen=True)
class ShardingSettings:
    """How ``shard_stage`` wraps a stage for FSDP2.

    Args:
        block_classes: class names sharded as their own units (None = every ``_no_split_modules`` name of the HF
            models inside).
        mixed_precision: "auto" (bf16 params / fp32 gradient reduction on GPU, none on CPU), "bf16" or "none".
        activation_checkpointing: recompute each block's activations in backward (saves memory).
        reshard_after_forward: free the gathered weights after each forward (ZeRO-3; False = ZeRO-2-like).

    YAML, in any stage (ignored unless ``trainer.strategy`` is ``ModelParallelStrategy``)::

        model:
          init_args:
            sharding: {block_classes: [BertLayer], activation_checkpointing: true, mixed_precision: bf16}
    """

    block_classes: Sequence[str] | None = None
    mixed_precision: str = "auto"
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("auto", "bf16", "none"):
            raise ValueError(f"sharding.mixed_precision: expected 'auto', 'bf16' or 'none', received {self.mixed_precision!r}")
        if self.block_classes is not None and (isinstance(self.block_classes, str) or not all(
                isinstance(n, str) and n for n in self.block_classes)):
            raise ValueError(f"sharding.block_classes: expected a list of class names, received {self.block_classes!r}")
        for name in ("activation_checkpointing", "reshard_after_forward"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"sharding.{name}: expected true or false, received {getattr(self, name)!r}")


def no_split_module_names(module: nn.Module) -> set[str]:
    """Every class name in the ``_no_split_modules`` of the HF models inside ``module``."""
    names: set[str] = set()
    for sub in module.modules():
        names.update(getattr(sub, "_no_split_modules", None) or ())
    return names


def transformer_blocks(module: nn.Module, block_classes: Sequence[str] | None = None) -> list[nn.Module]:
    """The modules of ``module`` sharded as units of their own, outermost first (a block inside a block is skipped).

    ValueError naming the missing classes when ``block_classes`` lists a name no submodule has.
    """
    names = set(block_classes) if block_classes is not None else no_split_module_names(module)
    if block_classes is not None:
        present = {type(m).__name__ for m in module.modules()}
        missing = sorted(names - present)
        if missing:
            raise ValueError(f"sharding.block_classes: {missing} name no module of {type(module).__name__}; "
                             f"received {sorted(names)}, block-like classes present: "
                             f"{sorted(n for n in present if n.endswith(('Layer', 'Block')))[:12]}")
    owners: dict[int, set[str]] = {}  # parameter -> every path that reaches it (tied weights have several)
    for path, param in module.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), set()).add(path)
    blocks: list[nn.Module] = []
    for prefix, sub in module.named_modules():
        if type(sub).__name__ in names and not any(_contains(b, sub) for b in blocks) and not _tied_outside(
                sub, prefix, owners):
            blocks.append(sub)
    return blocks


def _tied_outside(block: nn.Module, prefix: str, owners: dict[int, set[str]]) -> bool:
    """Whether a parameter of ``block`` is also used outside it (e.g. input embeddings tied to an LM head): such a
    block stays in its parent's unit, since FSDP2 gathers a unit's weights only for that unit's forward."""
    return any(not path.startswith(prefix + ".") for p in block.parameters() for path in owners[id(p)])


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def mixed_precision_policy(setting: str, device: torch.device):
    """bf16 params / fp32 gradient reduction (GPU with "auto", or "bf16"), else None (full precision)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def shard_stage(stage: nn.Module, mesh, settings: ShardingSettings | None = None,
                device: torch.device | None = None, skip: Sequence[str] = ()) -> list[nn.Module]:
    """``fully_shard`` every transformer block of ``stage``'s children, then each child holding parameters;
    the children named in ``skip`` stay whole on every rank (e.g. a reward classifier each rank retrains itself).

    Returns the roots that were sharded. Idempotent: modules that are already FSDP units are left alone.
    0-dim parameters stay whole on every rank, their gradients averaged like DDP (``replicate_gradients``).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    settings = settings or ShardingSettings()
    device = device if device is not None else torch.device("cpu")
    kwargs = {"mesh": mesh, "reshard_after_forward": settings.reshard_after_forward}
    policy = mixed_precision_policy(settings.mixed_precision, device)
    if policy is not None:
        kwargs["mp_policy"] = policy
    for name in skip:
        if not isinstance(getattr(stage, name, None), nn.Module):
            raise TypeError(f"skip: {type(stage).__name__} has no child module {name!r}")
    kept = {id(p) for name in skip for p in getattr(stage, name).parameters()}
    scalars = [p for p in stage.parameters() if p.dim() == 0 and id(p) not in kept]  # fully_shard cannot split a 0-dim parameter
    if scalars:
        kwargs["ignored_params"] = set(scalars)
        replicate_gradients(scalars, mesh)
    blocks = [b for b in transformer_blocks(stage, settings.block_classes)
              if not any(_contains(getattr(stage, name), b) for name in skip)]
    if settings.activation_checkpointing:
        _checkpoint_blocks(stage, {id(b) for b in blocks})
    for block in blocks:
        if not isinstance(block, FSDPModule):
            fully_shard(block, **kwargs)
    roots = []
    skipped = [getattr(stage, name) for name in skip]
    for child in stage.children():
        if isinstance(child, FSDPModule) or any(child is s for s in skipped) or not any(True for _ in child.parameters()):
            continue
        fully_shard(child, **kwargs)
        roots.append(child)
    return roots


def _checkpoint_blocks(stage: nn.Module, block_ids: set[int]) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    apply_activation_checkpointing(stage, check_fn=lambda m: id(m) in block_ids)


def is_sharded(module: nn.Module) -> bool:
    """Whether any submodule of ``module`` is an FSDP2 unit."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


@contextmanager
def gathered(*modules: nn.Module | None) -> Iterator[None]:
    """Run the block with every FSDP2 unit of ``modules`` unsharded once (no all-gather per forward), resharded
    after. A no-op for modules that are not sharded (or None)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for module in modules if module is not None for m in module.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    for unit in units:  # outermost first: HF generate may skip the root's forward (PEFT calls the inner model),
        state = unit._get_fsdp_state()  # so the root claims its units here, as its first forward would
        if state._is_root is None:
            state._lazy_init()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict of ``module`` on CPU (a collective: every rank calls it; rank 0 receives the
    tensors, the other ranks an empty dict). For a module that is not sharded, its ordinary state dict."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def total_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all ``tensors`` together (0 when empty) as a float32 scalar, the same on every rank.

    Plain tensors count as they are; FSDP2-sharded DTensors with their full tensors: the squared norms of the
    local shards are summed over the shard group (one all-reduce per mesh); replicated DTensors via full_tensor.
    """
    from torch.distributed.tensor import DTensor, Shard

    if not tensors:
        return torch.zeros(())
    plain = [t for t in tensors if not isinstance(t, DTensor)]
    sharded: dict = {}
    squares: list[torch.Tensor] = []
    for t in tensors:
        if isinstance(t, DTensor):
            if all(isinstance(p, Shard) for p in t.placements):
                sharded.setdefault(t.device_mesh, []).append(t.to_local())
            else:
                squares.append(torch.linalg.vector_norm(t.full_tensor().float()).square())
    if plain:  # one norm kernel per device and dtype, one stack
        norms = torch._foreach_norm(plain)
        squares.append(torch.stack([n.to(norms[0].device, torch.float32) for n in norms]).square().sum())
    for mesh, shards in sharded.items():
        local = torch.stack([n.float().square() for n in torch._foreach_norm(shards)]).sum()
        torch.distributed.all_reduce(local, group=mesh.get_group())
        squares.append(local)
    device = squares[0].device
    return torch.stack([s.to(device) for s in squares]).sum().sqrt()


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Scale the gradients of ``parameters`` so their joint norm (``total_norm``) is at most ``max_norm``;
    returns the norm before clipping. Works on a mix of sharded (DTensor) and replicated gradients, where
    ``torch.nn.utils.clip_grad_norm_`` refuses to stack their norms."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = total_norm(grads)
    coef = min(1.0, float(max_norm) / (float(norm) + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm


def replicate_gradients(params: Sequence[nn.Parameter], mesh) -> None:
    """Average the gradients of parameters FSDP2 leaves unsharded (0-dim ones, e.g. a CLIP logit scale) over
    ``mesh`` after each backward, as DDP would: all ranks then take the same step."""
    group = mesh.get_group()

    def average(param: nn.Parameter) -> None:
        torch.distributed.all_reduce(param.grad, group=group)
        param.grad.div_(mesh.size())

    for param in params:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(average)


def fill_optimizer_states(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter of ``optimizer`` that has no state the state its first step would create, so that a
    distributed checkpoint holds a state for every parameter.

    torch.distributed.checkpoint refuses to resume from a sharded checkpoint that lacks a parameter's optimizer
    state ("Missing key in checkpoint state_dict"), which happens when a trainable parameter never received a
    gradient before the save (e.g. the policy head of an actor-critic trained in supervised mode). The states are
    made by one step with zero gradients at learning rate 0 for those parameters only (weights unchanged), then the
    step counters are reset to 0: for Adam, zero moments at step 0, exactly the state its first real step starts from.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    missing = {id(p) for p in params if not optimizer.state.get(p)}
    if not missing:
        return
    grads, lrs = [p.grad for p in params], [group["lr"] for group in optimizer.param_groups]
    try:
        for p in params:
            p.grad = torch.zeros_like(p) if id(p) in missing else None
        for group in optimizer.param_groups:
            group["lr"] = torch.zeros_like(group["lr"]) if isinstance(group["lr"], torch.Tensor) else 0.0
        optimizer.step()
    finally:
        for p, grad in zip(params, grads):
            p.grad = grad
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
    for p in params:
        state = optimizer.state.get(p) if id(p) in missing else None
        if state and "step" in state:
            state["step"] = state["step"].zero_() if isinstance(state["step"], torch.Tensor) else 0
