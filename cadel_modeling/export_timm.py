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
    parser.add_argument("out_dir", help="the timm model folder to write: new or empty")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="write into a non-empty folder (never into a cadel run or model folder)")
    args = parser.parse_args(argv)
    from .hub.timm_export import export_timm_backbone
    from .utils.errors import UserError
    try:
        out = export_timm_backbone(args.model, args.out_dir, overwrite=args.overwrite_output_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {out}: timm.create_model('local-dir:{out}', pretrained=True)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
