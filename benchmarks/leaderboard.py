"""The full leaderboard of the evaluation chapter (book/08_evaluation): every method of
`vizlib.registry` on the shapes set with ground-truth masks, and on photos with EfficientNet-Lite0.

    python benchmarks/leaderboard.py [--shapes 200] [--out benchmarks/leaderboard.md]

Writes one Markdown file with the date, the machine and both tables; the chapter shows it when it
exists. The shapes net is the chapter's GAPNet (trained with `models.train`, cached).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import warnings
from pathlib import Path

import torch

from vizlib import data, device, evaluation, models, registry

SHAPE_METRICS = ["pointing game", "relevance mass", "relevance rank", "localization", "deletion AUC",
                 "insertion AUC"]
PHOTO_METRICS = ["deletion AUC", "insertion AUC", "infidelity", "max-sensitivity"]
PHOTOS = ("chelsea", "coffee", "cat_and_coffee", "astronaut")


def shapes_net(where) -> torch.nn.Module:
    """The chapter's small net, chapter 4's default GAPNet: 1500 shapes, 4 epochs (cached)."""
    train_set = data.shapes(2000, seed=0).subset(torch.arange(1500))
    return models.train(models.GAPNet().to(where), train_set, epochs=4, progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=200, help="held-out shapes images")
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/leaderboard.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")
    where = device()
    torch.manual_seed(0)
    held_out = data.shapes(args.shapes, seed=1)
    on_shapes = evaluation.leaderboard(list(registry.METHODS), held_out, SHAPE_METRICS, model=shapes_net(where),
                                       setting="shapes", progress=True)
    lite0 = models.load_efficientnet_lite0(where)
    photos = torch.cat([data.preprocess(data.load_image(name)) for name in args.photos]).to(where)
    on_photos = evaluation.leaderboard(list(registry.METHODS), photos, PHOTO_METRICS, model=lite0,
                                       setting="lite0", batch_size=1, progress=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.node()}, {platform.processor() or platform.machine()}, {where}, torch {torch.__version__}"
    text = (f"# Leaderboard\n\nComputed {stamp} on {machine}, {torch.get_num_threads()} threads.\n\n"
            f"## Shapes ({args.shapes} held-out images, GAPNet)\n\n{evaluation.to_markdown(on_shapes)}\n\n"
            f"## Photos ({', '.join(args.photos)}; EfficientNet-Lite0)\n\n{evaluation.to_markdown(on_photos)}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
