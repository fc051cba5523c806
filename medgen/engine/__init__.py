from medgen.engine.checkpoints import CheckpointSaver, ResumeFromLatest, latest_checkpoint, save_state_dict_atomic
from medgen.engine.handlers import LossHistory, LossProgressBar, ModelExporter, SampleGridHandler, TimeLimit

__all__ = [
    "CheckpointSaver",
    "LossHistory",
    "LossProgressBar",
    "ModelExporter",
    "ResumeFromLatest",
    "SampleGridHandler",
    "TimeLimit",
    "latest_checkpoint",
    "save_state_dict_atomic",
]
