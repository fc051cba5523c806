from medgen.diffusion.inferer import ConditionalDiffusionInferer
from medgen.diffusion.pipeline import DiffusionPipeline, make_scheduler
from medgen.diffusion.prepare_batch import ConditionalDiffusionPrepareBatch

__all__ = ["ConditionalDiffusionInferer", "ConditionalDiffusionPrepareBatch", "DiffusionPipeline", "make_scheduler"]
