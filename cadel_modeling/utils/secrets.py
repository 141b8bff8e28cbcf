"""Secrets never written: the Hub token is dropped from every saved config and redacted from every recorded or
printed command line (``--hub_token ***``). The token itself is best not typed at all: ``HF_TOKEN`` or
``huggingface-cli login`` keep it out of the shell history and of other users' ``ps``."""
from __future__ import annotations

import re
import shlex
from typing import List, Mapping, Sequence

SECRET_KEYS = ("hub_token",)
# --hub_token X, --hub-token=X, cadel-push-to-hub's --token X; and anything shaped like a Hub token (hf_ + 30 or more
# letters and digits) wherever it stands.
_FLAG_VALUE = re.compile(r"(--(?:hub[_-])?token)(=|\s+)(?!\*\*\*)(\S+)")
_HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
MASK = "***"


def redact(text: str) -> str:
    """``text`` with every token flag's value and every Hub-token-shaped word replaced by ``***``."""
    return _HUB_TOKEN.sub(MASK, _FLAG_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text))


def redact_args(args: Sequence[str]) -> List[str]:
    """A command's argument list with every token redacted (the rule of ``redact``), e.g. flags a tool records."""
    return shlex.split(redact(shlex.join(args)))


def without_secrets(mapping: Mapping) -> dict:
    """A config dict with its secret keys set to None (what is saved, logged and sent to trackers)."""
    return {k: (None if k in SECRET_KEYS else v) for k, v in mapping.items()}
