"""The explorer: every method of `vizlib.registry` on a few photos, one control per choice.

`Explorer(model, images)` shows the image with the chosen method's map overlaid, for a chosen
layer (CAM family), class (the model's top-k) and main parameter (SmoothGrad's samples, IG's
steps, ...). It is the app of ``book/explorer.ipynb`` (``make explorer`` serves it with Voila).

Two things keep it interactive on a 2-core CPU:

- For CAM and Grad-CAM (survey §2.1.3, Eq. (28)–(29)) one forward pass per image records the
  activations A of every selectable layer and keeps the autograd graph. Switching the class then
  costs one backward pass from the logit to the layer (``torch.autograd.grad`` on the retained
  graph), and switching the layer costs nothing more; the maps are those of `vizlib.cam`, built
  by its own weighting and finishing helpers (the tests compare them with the direct calls).
- Every other method runs in a worker thread. A forward pre-hook on the model counts the images
  it forwards (the progress bar, against the method's cost when the registry declares one) and
  raises when Cancel is pressed; the hook is always removed and the model's modes and
  ``requires_grad`` flags are restored (`mechanics.preserved`), also when cancelled.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import ipywidgets as widgets
import numpy as np
import torch
from PIL import Image
from torch import nn

from . import registry, viz
from .cam import (_Pass, _check_feature_map, _check_gap_linear_head, _finish, _grad_cam_maps, _graph_starts_at,
                  _linear_head, _weighted_sum)
from .data import SHAPE_CLASSES, deprocess
from .mechanics import Capture, capture, check_input, preserved, resolve_layer
from .models import EfficientNetLite0, imagenet_classes

__all__ = ["Explorer", "default_layers"]

# The Lite0 layers offered: the head and the last block of each stage from 28×28 down to 7×7.
LITE0_LAYERS = ("head", "blocks.15", "blocks.14", "blocks.10", "blocks.7", "blocks.4")


def default_layers(model: nn.Module) -> list[str]:
    """The layers offered for the CAM family: `LITE0_LAYERS` for EfficientNet-Lite0; for a net
    with a `features` Sequential (the small nets of `vizlib.models`) "features" and the output of
    each stage before its max-pooling, deepest first. Other models need ``layers=``."""
    if isinstance(model, EfficientNetLite0):
        return list(LITE0_LAYERS)
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"layers: no default layers for a {type(model).__name__}; pass layers=[...] "
                         f"with the names of convolutional layers (see model.named_modules())")
    before_pooling = [f"features.{index - 1}" for index, module in enumerate(features)
                      if isinstance(module, nn.MaxPool2d) and index > 0]
    return ["features", *reversed(before_pooling)]


class _Cancelled(Exception):
    """Raised inside the model's forward pass when the running computation is cancelled."""


@dataclass
class _Selection:
    """What the controls say: the picture to compute."""

    image: str
    method: str
    layer: str | None
    target: int
    parameter: object


@dataclass
class _Job:
    selection: _Selection
    started: float
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class _RetainedPass:
    """One forward pass of an image with its graph kept: the logits and each offered layer's A."""

    image: str
    logits: torch.Tensor
    activations: dict[str, torch.Tensor]


# The methods computed from a retained pass (with no options but the layer): one backward pass
# per class switch, none per layer switch.
RETAINED_METHODS = ("cam", "grad-cam")


@contextlib.contextmanager
def _graph_from(model: nn.Module, layers: list[str]) -> Iterator[dict[str, Capture]]:
    """`capture` of several layers whose outputs start the autograd graph (the parameters are
    frozen, so the graph would otherwise be empty), as `vizlib.cam` builds it."""
    with contextlib.ExitStack() as stack:
        stores = {name: stack.enter_context(capture(model, name, gradients=False)) for name in layers}
        stack.enter_context(_graph_starts_at(store.module for store in stores.values()))
        yield stores


class Explorer(widgets.VBox):
    """Controls for image, method, layer, class and main parameter above the image with the map.

    model: a classifier, left as it was found (also when a computation is cancelled); it runs
    where its parameters are (the images are moved there).
    images: {name: preprocessed tensor [1, 3, H, W]} or a list of such tensors.
    classes: the class names (default: ImageNet's for 1000 outputs, the shapes' for 4).
    layers: the layers offered to the CAM family (default: `default_layers`).
    setting: the registry defaults to use, "lite0" or "shapes" (default: "lite0" for
    EfficientNet-Lite0, else "shapes"). top_k: how many classes the class control offers.
    to_rgb: turns an image tensor into an [H, W, 3] picture in [0, 1] (default: `data.deprocess`
    for "lite0"; for "shapes" the tensor itself, whose values are already in [0, 1]).

    For scripts and tests: `select` sets controls, `wait` waits for the picture, `cancel` stops
    a computation; `image_bytes` is the PNG shown, `saliency` its map, `last_latency` the
    seconds from the change to the picture, `state` "running", "ready", "cancelled" or "error".
    """

    def __init__(self, model: nn.Module, images, classes=None, *, layers=None, setting: str | None = None,
                 top_k: int = 5, to_rgb=None, width: int = 336):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = next(model.parameters()).device
        self.images = self._checked_images(images)
        self.setting = setting or ("lite0" if isinstance(model, EfficientNetLite0) else "shapes")
        if self.setting not in registry.SETTINGS:
            raise ValueError(f"setting: expected one of {', '.join(registry.SETTINGS)}, got {setting!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
        self.top_k = top_k
        self.layers = list(default_layers(model) if layers is None else layers)
        if not self.layers:
            raise ValueError("layers: expected at least one layer name")
        for layer in self.layers:
            resolve_layer(model, layer)
        self.to_rgb = to_rgb or (deprocess if self.setting == "lite0" else _unit_range_rgb)
        self._model_lock = threading.Lock()          # one computation uses the model at a time
        self._probabilities: dict[str, torch.Tensor] = {}
        self._pictures: dict[str, np.ndarray] = {}    # each image as RGB in [0, 1], for the overlay
        self._retained: _RetainedPass | None = None
        self._job: _Job | None = None
        self._quiet = False                          # True while controls are set in code
        self.saliency: torch.Tensor | None = None
        self.last_latency: float | None = None
        self.state = "running"
        self.error: Exception | None = None

        first = next(iter(self.images))
        self.classes = self._checked_classes(classes, self._predictions(first).numel())
        self._build_controls(first, width)
        self._request()

    # -- checks ----------------------------------------------------------------------------

    def _checked_images(self, images) -> dict[str, torch.Tensor]:
        if isinstance(images, (list, tuple)):
            images = {f"image {index}": image for index, image in enumerate(images)}
        if not isinstance(images, dict):
            raise TypeError(f"images: expected a dict {{name: tensor [1, 3, H, W]}} or a list of tensors, "
                            f"got {type(images).__name__}")
        if not images:
            raise ValueError("images: expected at least one image, got none")
        checked = {}
        for name, image in images.items():
            image = check_input(image, name=f"images[{name!r}]")
            if image.shape[0] != 1:
                raise ValueError(f"images[{name!r}]: expected one image [1, C, H, W], got a batch of "
                                 f"{image.shape[0]}")
            checked[str(name)] = image.to(self.device)
        return checked

    @staticmethod
    def _checked_classes(classes, num_classes: int) -> list[str]:
        if classes is None:
            if num_classes == 1000:
                return imagenet_classes()
            if num_classes == len(SHAPE_CLASSES):
                return list(SHAPE_CLASSES)
            return [f"class {index}" for index in range(num_classes)]
        classes = [str(name) for name in classes]
        if len(classes) != num_classes:
            raise ValueError(f"classes: expected {num_classes} names (the model has {num_classes} outputs), "
                             f"got {len(classes)}")
        return classes

    def _class_index(self, class_) -> int:
        if isinstance(class_, str):
            if class_ not in self.classes:
                raise ValueError(f"class_: unknown class name {class_!r}")
            return self.classes.index(class_)
        if isinstance(class_, bool) or not isinstance(class_, int) or not 0 <= class_ < len(self.classes):
            raise ValueError(f"class_: expected a class name or an index in [0, {len(self.classes)}), "
                             f"got {class_!r}")
        return class_

    @torch.no_grad()
    def _predictions(self, image: str) -> torch.Tensor:
        """The class probabilities [K] of one image, from one forward pass cached per image."""
        if image not in self._probabilities:
            with self._model_lock, preserved(self.model):
                logits = self.model(self.images[image])
            self._probabilities[image] = logits.softmax(dim=-1)[0].float().cpu()
        return self._probabilities[image]

    # -- controls --------------------------------------------------------------------------

    def _build_controls(self, first_image: str, width: int) -> None:
        self.image_picker = widgets.Dropdown(options=list(self.images), value=first_image, description="image")
        self.method_picker = widgets.Dropdown(options=list(registry.METHODS), value="grad-cam",
                                              description="method")
        self.layer_picker = widgets.Dropdown(options=self.layers, description="layer")
        self.class_picker = widgets.Dropdown(description="class")
        self.parameter_picker = widgets.SelectionSlider(options=["-"], description="parameter",
                                                        continuous_update=False)
        self.progress = widgets.IntProgress(min=0, max=1, description="running")
        self.cancel_button = widgets.Button(description="Cancel", button_style="warning")
        self.cancel_button.on_click(lambda _: self.cancel())
        self.progress_box = widgets.HBox([self.progress, self.cancel_button],
                                         layout=widgets.Layout(display="none"))
        self.picture = widgets.Image(format="png", layout=widgets.Layout(width=f"{width}px"))
        self.caption = widgets.HTML()
        # CSS classes name the parts, for the browser test and for styling.
        parts = {"image": self.image_picker, "method": self.method_picker, "layer": self.layer_picker,
                 "class": self.class_picker, "parameter": self.parameter_picker,
                 "progress": self.progress_box, "picture": self.picture, "caption": self.caption}
        for name, part in parts.items():
            part.add_class(f"vizlib-explorer-{name}")
        with self._quietly():
            self._update_class_options()
            self._update_method_controls()
        self.image_picker.observe(self._on_image, names="value")
        self.method_picker.observe(self._on_method, names="value")
        for control in (self.layer_picker, self.class_picker, self.parameter_picker):
            control.observe(self._on_value, names="value")
        self.children = [
            widgets.HBox([self.image_picker, self.method_picker, self.layer_picker]),
            widgets.HBox([self.class_picker, self.parameter_picker]),
            self.progress_box, self.picture, self.caption,
        ]

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """Set controls without each change starting a computation."""
        quiet, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = quiet

    def _update_class_options(self, keep: int | None = None) -> None:
        """The image's top-k classes with their probabilities, plus `keep` when it is not among them."""
        probabilities = self._predictions(self.image_picker.value)
        top = probabilities.topk(min(self.top_k, probabilities.numel())).indices.tolist()
        if keep is not None and keep not in top:
            top.append(keep)
        self.class_picker.options = [(f"{self.classes[index]} ({probabilities[index]:.1%})", index)
                                     for index in top]
        self.class_picker.value = top[0] if keep is None else keep

    def _update_method_controls(self) -> None:
        """Show the layer control for the methods that take one, and the method's main parameter."""
        method = registry.method(self.method_picker.value)
        self.layer_picker.layout.display = None if method.layer else "none"
        if method.main_parameter is None:
            self.parameter_picker.layout.display = "none"
            return
        name, values = method.main_parameter
        default = getattr(method, self.setting).get(name)
        self.parameter_picker.options = list(values)
        self.parameter_picker.value = default if default in values else values[0]
        self.parameter_picker.description = name
        self.parameter_picker.layout.display = None

    def _on_image(self, _change) -> None:
        self._cancel_running()   # frees the model for the new image's forward pass
        with self._quietly():
            self._update_class_options()
        self._on_value(_change)

    def _on_method(self, _change) -> None:
        with self._quietly():
            self._update_method_controls()
        self._on_value(_change)

    def _on_value(self, _change) -> None:
        if not self._quiet:
            self._request()

    # -- programmatic API ------------------------------------------------------------------

    def select(self, *, image: str | None = None, method: str | None = None, layer: str | None = None,
               class_=None, parameter=None) -> "Explorer":
        """Set any of the controls and recompute once; returns the explorer (see `wait`).

        class_ is a class index or name (a class outside the top-k is added to the control);
        parameter is one of the method's candidate values (`registry.Method.main_parameter`).
        """
        if image is not None and image not in self.images:
            raise ValueError(f"image: unknown image {image!r}; known: {', '.join(self.images)}")
        if method is not None and method not in registry.METHODS:
            raise ValueError(f"method: unknown method {method!r}; known: {', '.join(registry.METHODS)}")
        chosen = registry.method(method or self.method_picker.value)
        if layer is not None:
            if not chosen.layer:
                raise ValueError(f"layer: method {chosen.name!r} takes no layer")
            if layer not in self.layers:
                raise ValueError(f"layer: unknown layer {layer!r}; offered: {', '.join(self.layers)}")
        if parameter is not None:
            if chosen.main_parameter is None:
                raise ValueError(f"parameter: method {chosen.name!r} has no main parameter")
            name, values = chosen.main_parameter
            if parameter not in values:
                raise ValueError(f"parameter: {name} must be one of {values}, got {parameter!r}")
        target = None if class_ is None else self._class_index(class_)
        if image is not None and image != self.image_picker.value:
            self._cancel_running()
        with self._quietly():
            if image is not None:
                self.image_picker.value = image
                self._update_class_options()
            if method is not None:
                self.method_picker.value = method
                self._update_method_controls()
            if layer is not None:
                self.layer_picker.value = layer
            if parameter is not None:
                self.parameter_picker.value = parameter
            if target is not None:
                self._update_class_options(keep=target)
        self._request()
        return self

    def wait(self, timeout: float | None = 120.0) -> "Explorer":
        """Block until the current computation has finished or stopped; returns the explorer."""
        job = self._job
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
            if job.thread.is_alive():
                raise TimeoutError(f"timeout: the computation did not finish within {timeout} s")
        return self

    def cancel(self) -> None:
        """Stop the running computation at the model's next forward pass; the last picture stays."""
        if self._job is not None:
            self._job.cancel.set()

    @property
    def image_bytes(self) -> bytes:
        """The PNG shown: the image with the map overlaid."""
        return bytes(self.picture.value)

    def static_html(self) -> str:
        """What a page without a kernel shows: the current picture and its caption, and where the
        controls can be used (a live notebook, or the app of `make explorer`)."""
        source = f"data:image/png;base64,{base64.b64encode(self.image_bytes).decode('ascii')}"
        return (f'<div class="vizlib-explorer-static"><img src="{source}" alt="the explorer\'s picture">'
                f'<p>{self.caption.value}</p><p>The controls need a running kernel: open this notebook '
                f'in JupyterLab, or run <code>make explorer</code> for the app.</p></div>')

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.static_html()
        return bundle

    # -- computing -------------------------------------------------------------------------

    def _selection(self) -> _Selection:
        method = registry.method(self.method_picker.value)
        return _Selection(image=self.image_picker.value, method=method.name,
                          layer=self.layer_picker.value if method.layer else None,
                          target=self.class_picker.value,
                          parameter=self.parameter_picker.value if method.main_parameter else None)

    def _cancel_running(self) -> None:
        """Cancel the running computation and wait until it has let go of the model."""
        job = self._job
        if job is not None and job.thread is not None and job.thread.is_alive():
            job.cancel.set()
            job.thread.join()

    def _request(self) -> None:
        """Compute the selection in a worker thread; a computation still running is cancelled."""
        previous = self._job
        self._job = job = _Job(self._selection(), started=time.perf_counter())
        if previous is not None and previous.thread is not None:
            previous.cancel.set()
            previous.thread.join()
        self.state = "running"
        job.thread = threading.Thread(target=self._run, args=(job,), daemon=True, name="vizlib-explorer")
        job.thread.start()

    def _uses_retained_pass(self, selection: _Selection) -> bool:
        method = registry.method(selection.method)
        options = set(getattr(method, self.setting)) - {"layer"}
        return selection.method in RETAINED_METHODS and not options

    def _run(self, job: _Job) -> None:
        selection = job.selection
        try:
            with self._model_lock:
                if self._uses_retained_pass(selection):
                    saliency = self._from_retained_pass(selection)
                else:
                    saliency = self._with_progress(job)
            picture = self._picture(selection.image, saliency)
        except _Cancelled:
            if job is self._job:
                self.state = "cancelled"
                self.progress.bar_style, self.progress.description = "warning", "cancelled"
                self.caption.value = f"<b>{html.escape(selection.method)}</b>: cancelled"
            return
        except Exception as error:  # noqa: BLE001 — a combination that fails is shown, not raised
            if job is self._job:
                self.state, self.error = "error", error
                self.progress_box.layout.display = "none"
                self.caption.value = f"<b>{html.escape(selection.method)}</b> failed: {html.escape(str(error))}"
            return
        if job is not self._job:
            return
        self.saliency = saliency
        self.picture.value = picture
        self.last_latency = time.perf_counter() - job.started
        self.progress_box.layout.display = "none"
        self.caption.value = self._caption(selection)
        self.state, self.error = "ready", None

    def _retained_pass(self, image: str) -> _RetainedPass:
        """The forward pass of `image` with the graph from the offered layers to the logits kept
        (for the last image only: the graph holds the activations of the whole net)."""
        if self._retained is None or self._retained.image != image:
            self._retained = None
            with preserved(self.model), _graph_from(self.model, self.layers) as stores:
                logits = self.model(self.images[image].detach())
            for name, store in stores.items():
                _check_feature_map(name, store.activation)
            self._retained = _RetainedPass(image, logits, {name: store.activation for name, store in stores.items()})
        return self._retained

    def _from_retained_pass(self, selection: _Selection) -> torch.Tensor:
        """CAM (Eq. 28) or Grad-CAM (Eq. 29) of the selection from the retained pass, with
        `vizlib.cam`'s own weighting, ReLU and upsampling."""
        seen = self._retained_pass(selection.image)
        activation = seen.activations[selection.layer]
        target = torch.tensor([selection.target], device=self.device)
        if selection.method == "cam":
            fc = _linear_head(self.model, None)
            _check_gap_linear_head(selection.layer, activation.detach(), fc, seen.logits.detach())
            raw = _weighted_sum(fc.weight[target].detach(), activation.detach())
        else:
            gradient, = torch.autograd.grad(seen.logits[0, selection.target], activation, retain_graph=True)
            raw, = _grad_cam_maps(_Pass([activation.detach()], [gradient], target, seen.logits.detach()))
        return _finish(selection.layer, [raw], self.images[selection.image], relu=True, size="input",
                       interpolation="bilinear", normalize=False)

    def _options(self, selection: _Selection) -> dict:
        method = registry.method(selection.method)
        options = {} if selection.layer is None else {"layer": selection.layer}
        if selection.parameter is not None:
            options[method.main_parameter[0]] = selection.parameter
        return options

    def _with_progress(self, job: _Job) -> torch.Tensor:
        """The registry method of the selection, with a progress bar and cancellation: a forward
        pre-hook counts the images forwarded (against the registry's `Method.passes`)."""
        selection = job.selection
        method = registry.method(selection.method)
        x, options = self.images[selection.image], self._options(selection)
        expected, _ = method.passes(self.model, x, setting=self.setting, **options)
        self.progress.value, self.progress.max = 0, max(expected, 1)
        self.progress.bar_style, self.progress.description = "info", "running"
        self.progress_box.layout.display = None
        forwarded, last_drawn = 0, time.perf_counter()

        def count_forwards(module, inputs):
            nonlocal forwarded, last_drawn
            if job.cancel.is_set():
                raise _Cancelled
            forwarded += inputs[0].shape[0]
            # At most one redraw per 0.1 s: a message per forward would flood the front end.
            if time.perf_counter() - last_drawn > 0.1:
                last_drawn = time.perf_counter()
                self.progress.max = max(self.progress.max, forwarded)
                self.progress.value = forwarded

        handle = self.model.register_forward_pre_hook(count_forwards)
        try:
            with preserved(self.model, eval_mode=False, freeze=False):
                saliency = method(self.model, x, selection.target, setting=self.setting, **options)
        finally:
            handle.remove()
        return saliency.detach()

    # -- drawing ---------------------------------------------------------------------------

    def _picture(self, image: str, saliency: torch.Tensor) -> bytes:
        """PNG bytes of the image with the map's magnitude overlaid (largest channel per pixel for
        a map with several channels, 99th percentile = 1)."""
        heat = viz.heatmap(saliency, reduce=None if saliency.shape[1] == 1 else "max_abs", sign="abs")
        if image not in self._pictures:
            self._pictures[image] = self.to_rgb(self.images[image].cpu())
        picture = viz.overlay(self._pictures[image], heat)
        buffer = io.BytesIO()
        # The fastest zlib level: a third of the default's time, for a slightly larger file.
        Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(buffer, format="png", compress_level=1)
        return buffer.getvalue()

    def _caption(self, selection: _Selection) -> str:
        probability = self._predictions(selection.image)[selection.target]
        parts = [f"<b>{html.escape(selection.method)}</b>"]
        if selection.layer is not None:
            parts.append(f"layer {html.escape(selection.layer)}")
        if selection.parameter is not None:
            parts.append(f"{registry.method(selection.method).main_parameter[0]} = {selection.parameter}")
        parts.append(f"class {html.escape(self.classes[selection.target])} (p = {probability:.1%})")
        parts.append(f"{self.last_latency * 1e3:.0f} ms")
        return " · ".join(parts)


def _unit_range_rgb(image: torch.Tensor):
    """An input already in [0, 1] (the shapes) as an [H, W, 3] picture."""
    return image[0].clamp(0, 1).permute(1, 2, 0).numpy()
