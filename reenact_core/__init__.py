"""Motion-textual inversion on Stable Video Diffusion: the method, independent of ComfyUI.

Nothing in this package imports ComfyUI; the node pack (``nodes/``) and the standalone paths adapt
their models to :class:`reenact_core.denoiser.Denoiser`.
"""

__version__ = "0.1.0"
