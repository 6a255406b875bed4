"""Motion World: procedurally generated short clips (a smooth background and one sprite moving along a known
trajectory) where motion transfer can be trained and measured exactly, on CPU.

`world` generates scenes, motions (with a train / held-out split) and clips; `metrics` measures generated
clips against the ideal transfer. Not part of the node pack.
"""
