"""Torch model code (backbones, text encoder); imported only by training and export entry points."""
