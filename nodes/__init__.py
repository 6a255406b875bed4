"""ComfyUI glue: node classes and their registration. The method itself lives in reenact_core."""

from .embeddings import ApplyMotionEmbedding, LoadMotionEmbedding, MixMotionEmbeddings, SaveMotionEmbedding
from .examples import install_example_inputs
from .inversion import MotionInversionOptions, MotionTextualInversion
from .motion_world import MotionWorldLoader
from .paths import register_folder
from .reference import LoadMotionReference

register_folder()
install_example_inputs()

NODE_CLASS_MAPPINGS = {
    "LoadMotionReference": LoadMotionReference,
    "MotionTextualInversion": MotionTextualInversion,
    "MotionInversionOptions": MotionInversionOptions,
    "SaveMotionEmbedding": SaveMotionEmbedding,
    "LoadMotionEmbedding": LoadMotionEmbedding,
    "ApplyMotionEmbedding": ApplyMotionEmbedding,
    "MixMotionEmbeddings": MixMotionEmbeddings,
    "MotionWorldLoader": MotionWorldLoader,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadMotionReference": "Load Motion Reference",
    "MotionTextualInversion": "Motion Textual Inversion",
    "MotionInversionOptions": "Motion Inversion Options",
    "SaveMotionEmbedding": "Save Motion Embedding",
    "LoadMotionEmbedding": "Load Motion Embedding",
    "ApplyMotionEmbedding": "Apply Motion Embedding",
    "MixMotionEmbeddings": "Mix Motion Embeddings",
    "MotionWorldLoader": "Load Motion World (demo model)",
}
