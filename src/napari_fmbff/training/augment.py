"""Joint image + mask augmentation for training, built on torchvision.transforms.v2.

Geometry (flips, 90-degree turns, small scale / rotation) moves image and mask together;
photometric changes (brightness, contrast, gamma, noise, blur) touch the image only.
Images come in as float (3, H, W) in unit range, masks as (1, H, W).
"""

from __future__ import annotations

import torch


class Augment:
    def __init__(self, rotate_degrees: float = 15, scale=(0.85, 1.15), p_photometric: float = 0.8):
        from torchvision.transforms import v2

        self.geometry = v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomAffine(degrees=rotate_degrees, scale=scale)], p=0.5),
        ])
        self.photometric = v2.RandomApply([v2.ColorJitter(brightness=0.25, contrast=0.25)],
                                          p=p_photometric)
        self.blur = v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.2)
        self.noise = v2.RandomApply([v2.GaussianNoise(sigma=0.03, clip=False)], p=0.2)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        turns = int(torch.randint(0, 4, ()).item())
        if image.shape[-1] != image.shape[-2]:
            turns -= turns % 2  # a non-square crop keeps its shape: crops of a batch must agree
        image, mask = torch.rot90(image, turns, (1, 2)), torch.rot90(mask, turns, (1, 2))
        image, mask = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        # Colour jitter expects [0, 1]; keep what lies outside (percentile-scaled data) intact.
        image = self.photometric(image.clamp(0, 1)) + (image - image.clamp(0, 1))
        if torch.rand(()) < 0.3:
            image = F.adjust_gamma(image.clamp(0, 1), float(torch.empty(()).uniform_(0.7, 1.4)))
        image = self.noise(self.blur(image))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
