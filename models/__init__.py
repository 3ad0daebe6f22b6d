"""The seed architectures, their registry and their checkpoint loaders (mattrt.models)."""

from mattrt.models.base import MattingModel, Stage, TensorSpec, check_image
from mattrt.models.registry import create_model, get_settings, list_models, register_model
from mattrt.models.settings import ModelSettings

# Importing a model module registers it (one line per module).
from mattrt.models import salient  # noqa: E402,F401
from mattrt.models import alphanet  # noqa: E402,F401
from mattrt.models import shm  # noqa: E402,F401
from mattrt.models import aim  # noqa: E402,F401
from mattrt.models import sim  # noqa: E402,F401
from mattrt.models import aim_synthetic  # noqa: E402,F401
