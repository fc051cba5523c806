from medgen.diffusion.inferer import ConditionalDiffusionInferer
from medgen.diffusion.pipeline import DiffusionPipeline, make_scheduler
from medgen.diffusion.prepare_batch import ConditionalDiffusionPrepareBatch
from medgen.diffusion.solvers import DPMSolverMultistepScheduler

__all__ = [
    "ConditionalDiffusionInferer",
    "ConditionalDiffusionPrepareBatch",
    "DPMSolverMultistepScheduler",
    "DiffusionPipeline",
    "make_scheduler",
]
