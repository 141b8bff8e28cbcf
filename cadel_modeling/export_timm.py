"""Export the backbone of a cadel model as a timm model folder (config.json + model.safetensors).

    cadel-export-timm runs/fashion_mnist_lt timm_backbone/
    python -c "import timm; m = timm.create_model('local-dir:timm_backbone', pretrained=True)"
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cadel-export-timm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a cadel model folder, run folder or Hub model id")
    parser.add_argument("out_dir", help="the timm model folder to write")
    args = parser.parse_args(argv)
    from .hub.timm_export import export_timm_backbone
    try:
        out = export_timm_backbone(args.model, args.out_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: timm.create_model('local-dir:{out}', pretrained=True)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
