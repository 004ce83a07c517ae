"""Shared mechanics: layer lookup, hooks, module swapping, state guards, input checks, batching.

Every method in vizlib uses these helpers, so each piece of bookkeeping (removing hooks,
restoring modules, checking inputs) is written and tested once.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = [
    "resolve_layer",
    "capture",
    "Capture",
    "activations",
    "swapped",
    "preserved",
    "channels_last",
    "check_input",
    "check_target",
    "batches",
    "auto_batch_size",
    "resolve_batch_size",
    "scores_in_batches",
    "batchnorm_pairs",
    "fold_batchnorm",
    "inference_copy",
    "device",
    "hook_count",
    "observed",
]


def device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule of `model` named by a dotted path such as ``"blocks.3"``, or `layer` itself.

    An unknown name raises a KeyError listing the closest valid names.
    """
    if isinstance(layer, nn.Module):
        if not any(layer is module for module in model.modules()):
            raise ValueError("layer: the given module is not a submodule of model")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a module or a dotted name, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules:
        return modules[layer]
    names = [name for name in modules if name]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(
        f"layer: unknown layer name {layer!r}.{hint} "
        f"Top-level layers are: {', '.join(name for name, _ in model.named_children())}."
    )


@dataclass
class Capture:
    """What `capture` recorded for one layer: its output activation and the gradient w.r.t. it."""

    module: nn.Module
    activation: torch.Tensor | None = None
    gradient: torch.Tensor | None = None
    handles: list = field(default_factory=list, repr=False)


@contextlib.contextmanager
def capture(model: nn.Module, layer: str | nn.Module, *, gradients: bool = True) -> Iterator[Capture]:
    """Record the output of `layer` (and, after backward, the gradient w.r.t. it).

    The hooks are removed on exit, also when the body raises. If the layer runs several
    times in one forward pass, the last call is kept. The captured tensor is the layer's own
    output, safe from in-place operations that follow it.
    """
    store = Capture(resolve_layer(model, layer))

    def keep_gradient(grad: torch.Tensor) -> None:
        store.gradient = grad

    def keep_output(module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer: {type(module).__name__} returned {type(output).__name__}, expected a Tensor")
        store.activation = output
        if gradients and output.requires_grad:
            store.handles.append(output.register_hook(keep_gradient))
        # The network continues on a copy: an in-place op downstream (ReLU(inplace=True)) would
        # otherwise overwrite the captured activation.
        return output.clone()

    store.handles.append(store.module.register_forward_hook(keep_output))
    try:
        yield store
    finally:
        for handle in store.handles:
            handle.remove()
        store.handles.clear()


def hook_count(model: nn.Module) -> int:
    """How many module hooks (forward, forward-pre, backward, backward-pre) `model` carries."""
    return sum(len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
               + len(module._backward_pre_hooks) for module in model.modules())


# Observers: forward hooks that only watch (the evaluation leaderboard counts passes with one). Unlike
# other hooks they let `inference_copy` stand in for the model, and the copy calls them too; they
# are not called for the passes vizlib makes for itself (timing batch sizes, checking the copy).
_OBSERVERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()     # model → {hook id: hook}
_internal_passes = 0


@contextlib.contextmanager
def observed(model: nn.Module, hook: Callable[[nn.Module, tuple, torch.Tensor], None]) -> Iterator[nn.Module]:
    """Inside, ``hook(module, inputs, output)`` runs after every forward pass of `model` that a
    method asks for, including those it sends through the model's `inference_copy`. The hook must
    not change anything: unlike other hooks, it does not stop the methods from using the copy."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")

    def observer(module, inputs, output):
        if not _internal_passes:
            hook(module, inputs, output)

    handle = model.register_forward_hook(observer)
    _OBSERVERS.setdefault(model, {})[handle.id] = observer
    try:
        yield model
    finally:
        handle.remove()
        _OBSERVERS[model].pop(handle.id, None)


@contextlib.contextmanager
def _unobserved() -> Iterator[None]:
    """Passes made inside are vizlib's own bookkeeping: observers do not see them."""
    global _internal_passes
    _internal_passes += 1
    try:
        yield
    finally:
        _internal_passes -= 1


@torch.no_grad()
def activations(model: nn.Module, x: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    """The outputs of several layers for one forward pass: {layer name: activation [N, C, H, W]}."""
    x = check_input(x)
    names = [layers] if isinstance(layers, str) else list(layers)
    with contextlib.ExitStack() as stack, preserved(model):
        stores = {name: stack.enter_context(capture(model, name, gradients=False)) for name in names}
        model(x)
    return {name: store.activation for name, store in stores.items()}


def _parent_and_name(model: nn.Module, qualified_name: str) -> tuple[nn.Module, str]:
    parent_name, _, child_name = qualified_name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child_name


@contextlib.contextmanager
def swapped(
    model: nn.Module,
    select: Callable[[nn.Module], bool],
    replace: Callable[[nn.Module], nn.Module],
) -> Iterator[dict[str, nn.Module]]:
    """Temporarily replace every submodule for which ``select(module)`` is true by ``replace(module)``.

    A module registered under several names (torchvision's ResNet reuses one ReLU per block) is
    replaced by one shared replacement, so it stays shared. The replacement of an in-place module
    must not be in-place itself: `replace` receives the original and decides. The original
    modules are put back on exit, also when the body raises. Yields {name: replacement}.
    """
    originals: list[tuple[nn.Module, str, nn.Module]] = []
    replacements: dict[int, nn.Module] = {}
    named: dict[str, nn.Module] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if not name or not select(module):
            continue
        if id(module) not in replacements:
            replacements[id(module)] = replace(module)
        parent, child = _parent_and_name(model, name)
        originals.append((parent, child, module))
        named[name] = replacements[id(module)]
    try:
        for parent, child, module in originals:
            setattr(parent, child, replacements[id(module)])
        yield named
    finally:
        for parent, child, module in reversed(originals):
            setattr(parent, child, module)


@contextlib.contextmanager
def preserved(model: nn.Module, *, eval_mode: bool = True, freeze: bool = True) -> Iterator[nn.Module]:
    """Restore the train/eval mode of every submodule and each parameter's `requires_grad` on exit.

    Inside, the model is in eval mode (dropout off, BatchNorm uses running statistics) and its
    parameters do not require grad, so attribution computes gradients w.r.t. the input only.
    A black-box callable that is not an nn.Module has no such state and passes through as it is.
    """
    if not isinstance(model, nn.Module):
        yield model
        return
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for parameter, _ in flags:
                parameter.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


@contextlib.contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, every 4-D parameter and buffer of `model` is stored channels-last; on exit each (and
    each parameter's gradient) gets back the memory format it had, also when an exception is raised;
    a gradient left in the other layout would make every later backward pass warn. The values are
    untouched.

    Training loops use it: on the CPU a small CNN's convolutions train about 1.3-1.4× faster in this
    layout (`benchmarks/bench_training.py`). Parameters keep their identity, so an optimizer made
    before or inside keeps working.
    """
    tensors = [tensor for tensor in [*model.parameters(), *model.buffers()] if tensor.dim() == 4]
    contiguous = [tensor.is_contiguous() for tensor in tensors]
    try:
        for tensor in tensors:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
        yield model
    finally:
        for tensor, was_contiguous in zip(tensors, contiguous):
            if was_contiguous:
                tensor.data = tensor.data.contiguous()
                if tensor.grad is not None:
                    tensor.grad = tensor.grad.contiguous()


def check_input(x: torch.Tensor, *, name: str = "x") -> torch.Tensor:
    """Validate an image batch: a finite floating-point tensor shaped [N, C, H, W]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape [N, C, H, W], got {type(x).__name__}")
    if x.dim() == 3:
        raise ValueError(
            f"{name}: expected a batch [N, C, H, W], got a single image of shape {tuple(x.shape)}; "
            f"use {name}.unsqueeze(0)"
        )
    if x.dim() != 4:
        raise ValueError(f"{name}: expected 4 dimensions [N, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}; use {name}.float()")
    if x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(x.shape)}")
    if x.shape[3] in (1, 3, 4) and x.shape[1] > 4 and x.shape[2] > 4:
        raise ValueError(
            f"{name}: shape {tuple(x.shape)} looks channels-last [N, H, W, C]; "
            f"use {name}.permute(0, 3, 1, 2)"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    return x


def check_target(target, logits: torch.Tensor) -> torch.Tensor:
    """Turn `target` (int, LongTensor [N], or None for the predicted class) into a LongTensor [N].

    `logits` is the model's output [N, K] for the batch; it gives N, K and the predicted class.
    """
    n, num_classes = logits.shape[0], logits.shape[-1]
    if target is None:
        return logits.detach().argmax(dim=-1)
    if isinstance(target, bool):
        raise TypeError("target: expected an int, a LongTensor of shape [N] or None, got bool")
    if isinstance(target, int):
        target = torch.full((n,), target, dtype=torch.long, device=logits.device)
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
        target = target.to(device=logits.device, dtype=torch.long).reshape(-1)
        if target.numel() == 1:
            target = target.expand(n)
        elif target.numel() != n:
            raise ValueError(f"target: expected {n} class indices (one per image), got {target.numel()}")
    else:
        raise TypeError(f"target: expected an int, a LongTensor of shape [N] or None, got {type(target).__name__}")
    if (target < 0).any() or (target >= num_classes).any():
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise ValueError(f"target: class index {bad} is out of range for a model with {num_classes} classes")
    return target


def batches(n: int, batch_size: int | None) -> Iterator[slice]:
    """Slices covering range(n) in chunks of `batch_size` (all at once when None)."""
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    step = n if batch_size is None else batch_size
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


# Batch sizes that `batch_size="auto"` tries, and its choices so far, keyed by
# (model, input shape, dtype, device): measured once per process.
AUTO_BATCH_CANDIDATES = (1, 4, 16, 64)
_AUTO_BATCH_SIZES: dict[tuple, tuple[Callable, int]] = {}
_AUTO_BATCH_BUDGET_S = 0.5   # stop trying larger batches once one forward takes this long
# Sizes whose cost per image is within this factor of the cheapest count as equally cheap, and the
# smallest of them is taken: timing noise must not buy a larger batch (more memory, no speed).
_AUTO_BATCH_TOLERANCE = 1.03


def _is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


@torch.no_grad()
def auto_batch_size(model: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> int:
    """The batch size with the lowest measured forward time per image for inputs like `example`.

    `example` is one input [C, H, W] (or [1, C, H, W]) on the device where the model runs. The
    sizes of `AUTO_BATCH_CANDIDATES` are tried in increasing order, each timed by the fastest of
    three calls after one untimed call (which pays for new shapes), until a size runs out of
    memory, costs more per image than the best so far, or would take longer than half a second. The
    choice is the smallest size within 3 % of the lowest cost per image, and it is cached for the
    process per (model, shape, dtype, device), so only the first call pays. On a 2-core CPU the
    winner is small; on a GPU it is the largest that fits.
    """
    example = example if example.dim() == 4 else example[None]
    key = (id(model), tuple(example.shape[1:]), example.dtype, example.device)
    if key in _AUTO_BATCH_SIZES:
        owner, size = _AUTO_BATCH_SIZES[key]
        if owner() is model:            # not a new model that reuses a freed one's id
            return size
    synchronize = torch.cuda.synchronize if example.device.type == "cuda" else (lambda: None)
    per_image: dict[int, float] = {}
    with preserved(model), _unobserved():
        for size in AUTO_BATCH_CANDIDATES:
            if per_image and min(per_image.values()) * size > _AUTO_BATCH_BUDGET_S:
                break
            batch = example[:1].expand(size, *example.shape[1:]).contiguous()
            try:
                model(batch)
                seconds = []
                for _ in range(3):
                    synchronize()
                    start = time.perf_counter()
                    model(batch)
                    synchronize()
                    seconds.append(time.perf_counter() - start)
            except RuntimeError as error:
                if not _is_out_of_memory(error) or not per_image:
                    raise
                break
            cost = min(seconds) / size
            worse = bool(per_image) and cost > min(per_image.values())
            per_image[size] = cost
            if worse or min(seconds) > _AUTO_BATCH_BUDGET_S:
                break
    cheapest = min(per_image.values())
    chosen = min(size for size, cost in per_image.items() if cost <= _AUTO_BATCH_TOLERANCE * cheapest)
    try:
        owner = weakref.ref(model)
    except TypeError:                   # an object without weak references: kept alive instead
        owner = (lambda kept: lambda: kept)(model)
    _AUTO_BATCH_SIZES[key] = owner, chosen
    return chosen


def resolve_batch_size(batch_size, model: Callable[[torch.Tensor], torch.Tensor],
                       example: Callable[[], torch.Tensor]) -> int | None:
    """`batch_size` as given (a positive int or None = all at once), or, for "auto", the
    `auto_batch_size` of `model` for the input that ``example()`` builds."""
    if batch_size == "auto":
        return auto_batch_size(model, example())
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int, None or \"auto\", got {batch_size!r}")
    return batch_size


# --- a faster copy for forward passes that need only outputs ---------------------------------------

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def batchnorm_pairs(model: nn.Module) -> dict[int, nn.Module]:
    """{id of a Conv/Linear: the BatchNorm registered right after it in the same parent}.

    This is how Sequential stacks and torchvision blocks (conv1, bn1, …) place them. Registration
    order is not data flow, so a user of the pairs checks that each BatchNorm really takes its
    neighbour's output (LRP does it at run time, `inference_copy` by comparing outputs).
    """
    pairs = {}
    for parent in model.modules():
        children = list(parent.children())
        for layer, following in zip(children, children[1:]):
            if isinstance(layer, FOLDABLE) and isinstance(following, BATCHNORMS):
                pairs[id(layer)] = following
    return pairs


def fold_batchnorm(layer: nn.Module, batchnorm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``batchnorm(layer(a))`` as one affine map (new tensors, in eval mode):
    w' = w γ / σ, b' = (b − μ) γ / σ + β, with σ = sqrt(running_var + eps)."""
    weight = layer.weight.detach()
    out_features = weight.shape[0]
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(out_features, dtype=weight.dtype,
                                                                              device=weight.device)
    if batchnorm is None:
        return weight, bias
    scale = (batchnorm.running_var + batchnorm.eps).rsqrt()
    if batchnorm.weight is not None:
        scale = scale * batchnorm.weight.detach()
    shift = batchnorm.bias.detach() if batchnorm.bias is not None else torch.zeros_like(scale)
    weight = weight * scale.view(-1, *[1] * (weight.dim() - 1))
    return weight, (bias - batchnorm.running_mean) * scale + shift


@dataclass
class _InferenceCopy:
    version: tuple
    copy: nn.Module | None
    checked: set = field(default_factory=set)     # input shapes whose outputs were compared


_INFERENCE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_version(model: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in [*model.parameters(), *model.buffers()])


def _folded_copy(model: nn.Module) -> nn.Module | None:
    pairs = batchnorm_pairs(model)
    if not pairs:
        return None
    folded = {id(batchnorm) for batchnorm in pairs.values()}
    duplicate = copy.deepcopy(model).eval()
    for original, layer in zip(model.modules(), duplicate.modules()):
        if id(original) in pairs:
            weight, bias = fold_batchnorm(original, pairs[id(original)])
            layer.weight = nn.Parameter(weight.clone(), requires_grad=False)
            layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
    for original, parent in zip(model.modules(), duplicate.modules()):
        for child_name in list(parent._modules):
            if id(original._modules[child_name]) in folded:
                setattr(parent, child_name, nn.Identity())
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
    return duplicate.to(memory_format=torch.channels_last)


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` for forward passes whose outputs are all that is needed (the perturbation
    methods): every BatchNorm folded into the convolution or linear layer before it, with the eval
    statistics, and the weights in channels-last memory, which the CPU's convolutions run faster.

    The copy is made once and cached while the model's parameters and buffers are unchanged (an
    optimizer step or `load_state_dict` makes a new one). The model itself is never changed. It is
    returned as it is when it has hooks other than `observed` ones (they must run), has no
    BatchNorm to fold, or when `scores_in_batches` found that the copy's outputs differ from it (a
    BatchNorm registered after a layer it does not follow). The copy runs the model's own forward
    code on copied modules, so side effects written into `forward` (a counter, a cache) happen on
    the copy: count passes with `observed` instead.
    """
    if not isinstance(model, nn.Module):
        return model
    observers = _OBSERVERS.get(model, {})
    if hook_count(model) > len(observers):
        return model
    version = _weights_version(model)
    entry = _INFERENCE_COPIES.get(model)
    if entry is None or entry.version != version:
        entry = _INFERENCE_COPIES[model] = _InferenceCopy(version, _folded_copy(model))
    if entry.copy is None:
        return model
    entry.copy._forward_hooks.clear()          # the copy is private: it carries the model's observers
    entry.copy._forward_hooks.update(observers)
    return entry.copy


def _checked_inference_copy(model: nn.Module, example: Callable[[], torch.Tensor]) -> nn.Module:
    """`inference_copy(model)`, its outputs compared with the model's on ``example()`` the first
    time an input shape comes; a copy that disagrees is dropped and the model itself returned."""
    fast = inference_copy(model)
    if fast is model:
        return model
    entry = _INFERENCE_COPIES[model]
    batch = example()
    if tuple(batch.shape[1:]) not in entry.checked:
        with _unobserved():
            reference, outputs = model(batch), fast(batch)
        scale = reference.abs().amax().clamp(min=1.0)
        if reference.shape != outputs.shape or not (reference - outputs).abs().amax() <= 1e-4 * scale:
            entry.copy = None
            return model
        entry.checked.add(tuple(batch.shape[1:]))
    return fast


@torch.no_grad()
def scores_in_batches(
    model: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    make_batch: Callable[[slice], torch.Tensor],
    target: torch.Tensor,
    *,
    batch_size: int | str | None,
    softmax: bool = False,
    progress: bool = False,
    description: str | None = None,
) -> torch.Tensor:
    """The target scores of `n` generated inputs, forwarded in chunks of `batch_size`.

    ``make_batch(slice)`` builds the inputs of one chunk only when it is needed, so memory stays
    bounded by `batch_size` however many perturbed copies a method needs. ``target`` holds one
    class index per input (a LongTensor [n]). `model` may be any callable mapping images to scores
    [M, K]: an nn.Module is run in eval mode and restored afterwards; a black box is just called.
    With `softmax`, scores are class probabilities instead of raw outputs. ``batch_size="auto"``
    measures the model's cheapest batch size once (`auto_batch_size`). An nn.Module is forwarded
    through its `inference_copy` (BatchNorm folded, channels-last), checked against the model's
    own outputs the first time each input shape comes.
    """
    from tqdm.auto import tqdm

    if n == 0:
        return torch.empty(0)
    scores = []

    def first_input():
        return make_batch(slice(0, 1))

    with preserved(model), tqdm(total=n, disable=not progress, desc=description, leave=False) as bar:
        forward = _checked_inference_copy(model, first_input)     # a black box is called as it is
        batch_size = resolve_batch_size(batch_size, forward, first_input)
        for chunk in batches(n, batch_size):
            outputs = forward(make_batch(chunk))
            if softmax:
                outputs = outputs.softmax(dim=-1)
            scores.append(outputs.gather(-1, target[chunk].to(outputs.device).reshape(-1, 1)).squeeze(-1))
            bar.update(chunk.stop - chunk.start)
    return torch.cat(scores) if scores else torch.empty(0)
