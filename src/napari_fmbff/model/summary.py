"""What a model is, in numbers: parameters, FLOPs, modules (for fmbff info and benchmarks)."""

from __future__ import annotations


def describe(net, size: int = 512) -> dict:
    """Parameters, GFLOPs at ``size`` and the modules that are on."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .network import INPUT_MULTIPLE

    size = -(-size // INPUT_MULTIPLE) * INPUT_MULTIPLE
    cfg = net.config
    n_params = sum(p.numel() for p in net.parameters())
    n_encoder = sum(p.numel() for p in net.encoder.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net.eval()(torch.zeros(1, 3, size, size))
    modules = [m for m in ("fmcab", "aggregate_skips", "vitm", "biffm") if getattr(cfg, m)]
    return {
        "encoder": cfg.encoder,
        "parameters": f"{n_params / 1e6:.2f} M (encoder {n_encoder / 1e6:.2f} M)",
        f"GFLOPs @ {size}": f"{counter.get_total_flops() / 1e9:.2f} (1 image, multiply-add = 2)",
        "modules on": ", ".join(modules) or "none (plain U-Net)",
        "decoder": str(list(cfg.decoder_channels)),
        "transformer": f"dim {cfg.transformer_dim}, depth {cfg.transformer_depth}, "
                       f"heads {cfg.transformer_heads}",
    }
