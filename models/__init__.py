"""The seed architectures, their registry and their checkpoint loaders (mattrt.models)."""

# isort: skip_file  (the model modules register themselves in this order: `mattrt models` lists it)

# Importing a model module registers it (one line per module).
from mattrt.models import (
           aim,  # noqa: E402,F401
           aim_synthetic,  # noqa: E402,F401
           alphanet,  # noqa: E402,F401
           salient,  # noqa: E402,F401
           shm,  # noqa: E402,F401
           sim,  # noqa: E402,F401
)
from mattrt.models.base import MattingModel, Stage, TensorSpec, check_image
from mattrt.models.registry import create_model, get_settings, list_models, register_model
from mattrt.models.settings import ModelSettings

__all__ = ["MattingModel", "ModelSettings", "Stage", "TensorSpec", "check_image", "create_model", "get_settings",
           "list_models", "register_model"]
