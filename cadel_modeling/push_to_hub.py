"""Upload a cadel run or model folder to the Hugging Face Hub (e.g. to retry a failed upload without retraining).

    cadel-push-to-hub runs/fashion_mnist_lt --repo_id user/cadel-fmnist-lt --license mit
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cadel-push-to-hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a run folder (stage-1 output_dir) or a model folder")
    parser.add_argument("--repo_id", default=None, help="Hub repository id (default: the run folder's name)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--commit_message", default=None, help="commit message")
    parser.add_argument("--license", default="other", help="licence in the model card (the data's terms bind too)")
    parser.add_argument("--token", default=None, help="Hub token; prefer HF_TOKEN or `huggingface-cli login` (the "
                        "default): a token typed here shows in ps and the shell history")
    parser.add_argument("--eval_dir", action="append", default=[], help="an extra eval_<split> folder to upload")
    parser.add_argument("--card_path", default=None, help="where to write README.md (default: in the model folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .hub.publish import PushError, push_to_hub
    try:
        push_to_hub(args.path, args.repo_id, private=args.private, token=args.token, revision=args.revision,
                    commit_message=args.commit_message, license=args.license, eval_dirs=args.eval_dir,
                    card_path=args.card_path)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
