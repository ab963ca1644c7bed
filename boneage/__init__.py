"""boneage: automated bone age assessment from hand radiographs.

Method: Chen et al., "Attention-Guided Discriminative Region Localization and Label
Distribution Learning for Bone Age Assessment" (arXiv 2006.00202).
"""

__version__ = "0.1.0"
