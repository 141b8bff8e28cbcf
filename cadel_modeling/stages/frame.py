"""What every stage does around its own job: the accelerator with the run's trackers and the console log; the data
(one process builds and downloads first, the others read its cache); the saved model a stage reads, checked against
that data; the tracker run; and, once the job is done, the Hub upload (``--push_to_hub``) and the trackers' end.

    frame = StageFrame(cfg, out / TRACKING)
    data = frame.build_data()
    ...                                  # the stage's own job, with frame.accelerator
    frame.finish(upload=out / "model")   # uploaded with --push_to_hub only

A stage that fails never reaches ``finish``: nothing is uploaded and the trackers are not ended.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..config import RunConfig
from ..data import DataOptions, LongTailedData, build_datasets
from ..inference import check_model_matches_data
from ..modeling.factory import load_model
from ..training import tracking
from ..training.accelerator import make_accelerator
from ..training.tracking import tracking_kwargs
from ..utils.logging import setup_logging


class StageFrame:
    def __init__(self, cfg: RunConfig, tracking_dir: Path, **accelerator_kwargs):
        """``tracking_dir``: where file trackers write unless ``--tracking_dir`` says; ``accelerator_kwargs`` go to
        ``Accelerator`` with the trackers (checked before anything starts)."""
        self.cfg = cfg
        trackers = tracking_kwargs(cfg.report_to, cfg.tracking_dir, tracking_dir)
        self.accelerator = make_accelerator(**accelerator_kwargs, **trackers)
        setup_logging(self.accelerator.is_main_process)

    def build_data(self) -> LongTailedData:
        with self.accelerator.main_process_first():
            return build_datasets(DataOptions.from_config(self.cfg))

    def load_checked_model(self, model_dir: Path, data: LongTailedData):
        """The saved model in ``model_dir``, refused when it was trained on other classes than ``data`` has."""
        model = load_model(model_dir)
        check_model_matches_data(model.config, data, str(model_dir))
        return model

    def start_tracking(self, name: str) -> None:
        """The tracker run (named ``--run_name``, else ``name``) with the run's settings."""
        tracking.start(self.accelerator, self.cfg.run_name or name, self.cfg.to_dict())

    def finish(self, upload: Path, default_repo_id: Optional[str] = None, eval_dirs: Sequence[Path] = (),
               card_path: Optional[Path] = None) -> None:
        """Once every local file is final: with ``--push_to_hub``, upload ``upload`` to ``--hub_model_id`` (else
        ``default_repo_id``, else the run folder's name; ``hub.publish.push_to_hub``, on the main process: a failure
        raises PushError and keeps the files); then end the trackers."""
        cfg, accelerator = self.cfg, self.accelerator
        if cfg.push_to_hub and accelerator.is_main_process:
            from ..hub.publish import push_to_hub
            push_to_hub(upload, cfg.hub_model_id or default_repo_id, private=cfg.hub_private, token=cfg.hub_token,
                        revision=cfg.hub_revision, commit_message=cfg.hub_commit_message, license=cfg.hub_license,
                        eval_dirs=eval_dirs, card_path=card_path)
        accelerator.wait_for_everyone()
        accelerator.end_training()
