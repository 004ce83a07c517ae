"""Benchmarks: vizlib's methods against their reference implementations, on the same model,
inputs and machine, in one process. Run with `make bench` (never part of the tests).

Each row prints the median (and best) wall time per image of ours and of the reference, and the
ratio of the medians. Timings on a shared 2-core machine vary by up to 2× between runs; compare
rows of one run only. The first
rows are the limits every attribution method lives under: the raw batched forward and
forward+backward throughput of EfficientNet-Lite0 at 224×224.
"""
from __future__ import annotations

import argparse
import importlib
import time

import torch

from timing import print_table, timings
from vizlib import data, device, models

# One module per chapter, each with rows(model, image, repeats) -> [(case, ours, reference)].
FAMILIES = {
    "perturbation": "Perturbation vs Captum Occlusion / FeatureAblation",
    "backprop": "Gradients vs Captum",
    "lrp": "Relevance propagation vs Captum LRP / DeepLift",
    "cam": "Class activation maps vs Captum",
    "maximization": "Activation maximization vs the raw forward+backward / torch-lucent",
    "attention": "Attention modules: training and readout overhead",
    "surrogate": "LIME and SHAP vs Captum Lime / KernelShap / ShapleyValueSampling",
    "evaluation": "Evaluation metrics vs the raw forward / Captum infidelity and sensitivity",
    "robustness": "Attacks vs Captum FGSM / PGD",
    "explorer": "The explorer: class, layer and image switches vs direct vizlib.cam calls",
    "training": "Small-net training steps: channels-last (as models.train runs them) vs contiguous",
}


def limit_rows(model, image, batch_sizes, repeats):
    """Forward and forward+backward cost per image of EfficientNet-Lite0 by batch size."""
    rows = []
    for batch_size in batch_sizes:
        x = image.expand(batch_size, -1, -1, -1).contiguous()

        def forward():
            with torch.no_grad():
                model(x)

        def forward_backward():
            inputs = x.clone().requires_grad_()
            model(inputs)[:, 285].sum().backward()

        rows.append((f"forward, batch {batch_size}", [t / batch_size for t in timings(forward, repeats)], None))
        rows.append((f"forward+backward, batch {batch_size}",
                     [t / batch_size for t in timings(forward_backward, repeats)], None))
    return rows


def training_rows(n_train=2000, n_test=500):
    """Wall time of `models.train` (6 epochs, no cache) on shapes, and held-out accuracy."""
    train_set, test_set = data.shapes(n_train, seed=0), data.shapes(n_test, seed=1)
    rows = []
    for model in (models.GAPNet(), models.VGGNet(), models.AllConvNet()):
        start = time.perf_counter()
        models.train(model, train_set, cache=False, progress=False)
        rows.append((type(model).__name__, time.perf_counter() - start, models.accuracy(model, test_set)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--no-training", action="store_true", help="skip the small-net training rows")
    parser.add_argument("--only", nargs="+", choices=["limits", *FAMILIES], help="run only these tables")
    args = parser.parse_args()

    where = device()
    print(f"device: {where}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    model = models.load_efficientnet_lite0(where)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    image = data.preprocess(data.load_image("chelsea")).to(where)
    wanted = set(args.only or ["limits", *FAMILIES])
    if "limits" in wanted:
        print_table("Limits: EfficientNet-Lite0, 224×224 (per image; lower is better)",
                    limit_rows(model, image, args.batch_sizes, args.repeats))
    for family, title in FAMILIES.items():
        if family in wanted:
            module = importlib.import_module(f"bench_{family}")
            rows = module.rows(model, image, args.repeats)
            print_table(f"{title}: {getattr(module, 'SUBJECT', 'EfficientNet-Lite0, 224×224')}", rows)
    if not args.no_training and args.only is None:
        print("\nSmall nets: models.train on shapes(2000, 64×64), 6 epochs; accuracy on shapes(500, seed=1)")
        for name, seconds, accuracy in training_rows():
            print(f"{name:<34}{seconds:8.1f} s{accuracy:12.1%}")


if __name__ == "__main__":
    main()
