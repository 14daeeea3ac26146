"""``fmbff info``: a model's parameters, FLOPs and modules, or the registered models."""

from __future__ import annotations

from ._common import _add_model_arg, _load, _model_name, _positive_int


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="describe a model (parameters, FLOPs, modules)",
                          description="Describe a model, or list the registered models.")
    _add_model_arg(info)
    info.add_argument("--size", type=_positive_int, default=512, help="input size for FLOPs (512)")
    info.add_argument("--list", action="store_true", help="list registered models and exit")
    info.add_argument("--encoder", default=None,
                      help="describe a fresh (untrained) network with this timm encoder instead")


def cmd_info(args) -> int:
    from ..model.registry import list_models, models_dir
    from ..model.summary import describe

    if args.list:
        folder = models_dir(check=True)  # a file named as the folder: said, not listed empty
        models = list_models()
        print(f"models folder: {folder}")
        for name, path in models.items():
            print(f"  {name:24s} {path}")
        if not models:
            print("  (no models registered)")
        return 0
    if args.encoder:
        from ..model import FMBFFNet, ModelConfig

        net, source = FMBFFNet(ModelConfig(encoder=args.encoder)), "untrained"
    else:
        net = _load(args.model)
        source = net.metadata.get("source", "")
    for key, value in describe(net, args.size).items():
        print(f"{key:18s} {value}")
    if source:
        print(f"{'source':18s} {source}")
    if not args.encoder:
        from ..model.checkpoint import model_card

        print(f"{'card':18s} {model_card(_model_name(args.model))}")
    return 0

