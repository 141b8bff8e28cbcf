"""The image processor saved with every model: the evaluation transform of ``data/transforms.py`` as a stock
transformers ``CLIPImageProcessor``, so ``pipeline("image-classification")`` and ``AutoImageProcessor`` work
anywhere (no remote code needed for it)."""
from __future__ import annotations


def build_image_processor(image_size: int, image_mean, image_std, augmentation: str = "imagenet"):
    """RGB, resize (shortest edge to size*256/224 then center crop for 'imagenet'; straight to size x size for
    'small'/'none'), normalize. With the PIL backend the pixels are identical to evaluation's."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    if augmentation == "imagenet":
        resize = {"size": {"shortest_edge": round(image_size * 256 / 224)}, "do_center_crop": True}
    elif augmentation in ("small", "none"):
        resize = {"size": {"height": image_size, "width": image_size}, "do_center_crop": False}
    else:
        raise ValueError(f"unknown augmentation {augmentation!r}; use imagenet, small or none")
    return CLIPImageProcessor(do_convert_rgb=True, resample=PILImageResampling.BILINEAR,
                              crop_size={"height": image_size, "width": image_size}, image_mean=list(image_mean),
                              image_std=list(image_std), **resize)


def save_image_processor(model_dir, model_config, augmentation: str = "imagenet") -> None:
    """Write ``preprocessor_config.json`` next to the weights."""
    build_image_processor(model_config.image_size, model_config.image_mean, model_config.image_std,
                          augmentation).save_pretrained(str(model_dir))
