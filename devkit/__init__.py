"""Development kit shared by tests, benchmarks and the demo: a real ComfyUI in-process, test models.

Not part of the node pack (never imported by ComfyUI).
"""
