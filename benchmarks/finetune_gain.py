"""What the starter model is worth as a starting point: fine-tune it on 20 corrected images of a
look it never saw (procedural CT, int16 HU), against the same fine-tune from random weights.

    python benchmarks/finetune_gain.py [--epochs N] [--device auto]

Prints held-out Dice (50 unseen images of the same look) for: the starter as is, the starter
fine-tuned with the fine-tuning recipe (``finetune_config()``), and the same architecture
trained from random weights with the same recipe. Real lesions: benchmarks/few_shot.py.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    import torch

    from napari_fmbff import FMBFFNet, Segmenter, load_model
    from napari_fmbff.data.synthetic import make_sample
    from napari_fmbff.model.normalization import default_normalization
    from napari_fmbff.training.loop import (
        finetune_config,
        make_items,
        run_training,
        split_items,
    )
    from napari_fmbff.training.metrics import confusion, summarize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--look", default="ct")
    p.add_argument("--n-train", type=int, default=20)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    train = [make_sample(args.look, args.size, seed=s, n_lesions=1) for s in range(args.n_train)]
    test = [make_sample(args.look, args.size, seed=50_000 + s) for s in range(args.n_test)]

    def held_out_dice(net):
        seg = Segmenter(net, device=args.device, tile_size=args.size)
        counts = [confusion(seg.predict_proba(img) >= 0.5, m) for img, m in test]
        return summarize(counts)

    extra = {"epochs": args.epochs} if args.epochs else {}
    cfg = finetune_config(device=args.device, seed=0, **extra)

    def tune(net):
        torch.manual_seed(0)
        norm = default_normalization(net)
        tr, va = split_items(make_items(*zip(*train), norm), cfg.val_fraction, cfg.seed)
        start = time.time()
        result = run_training(net, tr, va, cfg, norm)
        return result.net, time.time() - start

    starter = load_model("starter")
    rows = [("starter, no fine-tuning", held_out_dice(starter), 0.0)]
    tuned, secs = tune(load_model("starter"))
    label = f"lr {cfg.lr:g}, {cfg.epochs} epochs"
    rows.append((f"starter + fine-tune ({label})", held_out_dice(tuned), secs))
    torch.manual_seed(0)
    scratch, secs = tune(FMBFFNet(starter.config))
    rows.append((f"random init, same recipe ({label})", held_out_dice(scratch), secs))

    print(f"# fine-tune gain | look {args.look} (never in the starter's data) | "
          f"{args.n_train} training images ({args.size} px) | "
          f"{args.n_test} held-out images | device {Segmenter(starter, device=args.device).device_label}")
    print("\n| model | Dice mean ± std | Dice pooled | Jaccard pooled | train s |")
    print("|---|---|---:|---:|---:|")
    for name, s, secs in rows:
        print(f"| {name} | {s['mean']['dice']:.3f} ± {s['std']['dice']:.3f} | "
              f"{s['pooled']['dice']:.3f} | {s['pooled']['jaccard']:.3f} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
