"""Make the example fine-tuned classifier from what ships: EfficientNet-Lite0 with a new head.

The backbone stays frozen (ImageNet weights); a new Linear head learns classes that are not ImageNet's,
each a group of the offline labelled objects' stamps (:data:`CLASSES`: bird, mammal, fruit, vehicle,
tool, ...). A third of every class's stamps is held out: the head never sees them, and their composites
become the team's labelled folder. Writes to ``--out``:

- ``classes.txt``: one class a line;
- ``model.pth``: the architecture's own ``state_dict()`` with N outputs, for
  ``--classifier efficientnet_lite0 --weights model.pth --classes classes.txt``;
- ``photos/<class>/<stamp>#<k>.jpg``: the held-out stamps' composites, and ``photos/labels.txt`` with
  the stamp as each photo's group (``--labelled photos/labels.txt`` keeps a stamp's composites on one
  side of every split; ``--labelled photos`` makes each photo a group of its own);
- ``custom_classifier.json``: the arguments, the stamps of each side and the head's accuracy.

The head is fitted on the frozen backbone's pooled features of the composites' centre crops, computed
on the build's feature graph (:mod:`fitguard.feature_graph`), so a run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

# class name -> stamp-id prefixes (training/data/objects.py groups items by stamp id)
CLASSES: dict[str, tuple[str, ...]] = {
    "mammal": ("animals/mammals/", "animals/marsupials/"),
    "bird": ("animals/birds/",),
    "fruit": ("food/fruit/",),
    "musical instrument": ("hobbies/music/",),
    "insect": ("animals/insects/",),
    "vegetable": ("food/vegetables/",),
    "tool": ("household/tools/",),
    "road sign": ("town/roadsigns/",),
    "fish": ("animals/fish/",),
    "vehicle": ("vehicles/", "military/vehicles/"),
    "sports gear": ("sports/",),
    "reptile or amphibian": ("animals/amphibians/", "animals/lizards/"),
    "mushroom": ("plants/mushrooms/",),
    "dishes": ("household/dishes/",),
}
HELD_OUT = 1 / 3  # share of each class's stamps held out (at least one)
EPOCHS = 300
WEIGHT_DECAY = 1e-3


def class_of(stamp: str) -> str | None:
    return next((name for name, prefixes in CLASSES.items() if stamp.startswith(prefixes)), None)


def split_stamps(stamps: list[str], seed: int) -> tuple[dict[str, str], set[str]]:
    """(stamp -> class for every stamp of a class, the held-out stamps: a seeded share of each class)."""
    rng = np.random.default_rng(seed)
    classes = {s: c for s in stamps if (c := class_of(s)) is not None}
    held: set[str] = set()
    for name in CLASSES:
        members = sorted(s for s, c in classes.items() if c == name)
        count = max(1, round(HELD_OUT * len(members)))
        held.update(rng.permutation(members)[:count].tolist())
    return classes, held


def pooled_features(net: Any, images: list[np.ndarray], batch: int = 32) -> np.ndarray:
    """The frozen backbone's pooled features [N, D] (what its ``fc`` reads) of the centre crops: the
    deepest level's spatial mean, read out of the feature graph's quality features."""
    from fitguard.feature_graph import feature_graph
    from fitguard.preprocess import classifier_crop

    graph = feature_graph(net)
    start = 2 * sum(net.level_channels[:-1])  # per level [mean, std]: the last level's mean
    out = []
    for i in range(0, len(images), batch):
        crops = np.stack([classifier_crop(im, net.preset) for im in images[i : i + batch]])
        out.append(graph(crops).quality_features[:, start : start + net.feature_dim])
    return np.concatenate(out)


def fit_head(x: np.ndarray, y: np.ndarray, classes: int, seed: int) -> Any:
    """A Linear head by full-batch Adam on the cross-entropy (standard softmax regression)."""
    import torch

    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=WEIGHT_DECAY)
    for _ in range(EPOCHS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(xt), yt).backward()
        opt.step()
    return head.eval()


def write_photos(out: Path, items: list[Any], labels: list[str]) -> None:
    from PIL import Image

    lines = []
    for item, name in zip(items, labels, strict=True):
        rel = Path(name) / f"{item.name.replace('/', '__')}.jpg"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(item.image()).save(out / rel, quality=95)
        lines.append(f"{rel.as_posix()}\t{name}\t{item.group}")
    (out / "labels.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make(out: Path, seed: int = 0) -> dict[str, Any]:
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.training.data import load_dataset

    dataset = load_dataset("objects")
    classes, held = split_stamps(dataset.groups(), seed)
    names = list(CLASSES)
    train = [it for it in dataset if it.group in classes and it.group not in held]
    test = [it for it in dataset if it.group in held]
    net = build_backbone("efficientnet_lite0")
    x_train = pooled_features(net, [it.image() for it in train])
    y_train = np.asarray([names.index(classes[it.group]) for it in train])
    head = fit_head(x_train, y_train, len(names), seed)
    x_test = pooled_features(net, [it.image() for it in test])
    y_test = np.asarray([names.index(classes[it.group]) for it in test])
    with torch.no_grad():
        accuracy = {
            "train": float((head(torch.from_numpy(x_train)).argmax(1).numpy() == y_train).mean()),
            "held_out": float((head(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()),
        }
    model = net.features.model  # the EfficientNet module: its state_dict is the architecture's own
    model._fc = head
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pth")
    (out / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    write_photos(out / "photos", test, [classes[it.group] for it in test])
    record = {
        "args": {"out": str(out), "seed": seed, "epochs": EPOCHS, "weight_decay": WEIGHT_DECAY},
        "classes": {n: sorted(s for s, c in classes.items() if c == n) for n in names},
        "held_out_stamps": sorted(held),
        "images": {"train": len(train), "held_out": len(test)},
        "accuracy": accuracy,
    }
    (out / "custom_classifier.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="custom", help="folder for classes.txt, model.pth and photos/")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args: argparse.Namespace) -> int:
    record = make(Path(args.out), seed=args.seed)
    acc = record["accuracy"]
    print(
        f"wrote {args.out}: {len(CLASSES)} classes, {record['images']['train']} training composites, "
        f"{record['images']['held_out']} held-out photos; accuracy {acc['train']:.1%} (train), "
        f"{acc['held_out']:.1%} (held out by stamp)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
