"""The three stages a command runs: stage-1 training, stage 2 (logit adjustment or cRT), evaluation."""


def push(cfg, path, repo_id=None, **kwargs) -> str:
    """Upload ``path`` with the run's Hub settings (after every local file is final; a failure raises PushError)."""
    from ..hub.publish import push_to_hub
    return push_to_hub(path, repo_id or cfg.hub_model_id, private=cfg.hub_private, token=cfg.hub_token,
                       revision=cfg.hub_revision, commit_message=cfg.hub_commit_message, license=cfg.hub_license,
                       **kwargs)
