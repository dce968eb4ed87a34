"""fitguard: refuse inputs an image classifier is not fit to judge.

The modules follow the served ensemble: :mod:`fitguard.preprocess` -> :mod:`fitguard.classifier` and
:mod:`fitguard.quality` (on :mod:`fitguard.backbones`) -> :mod:`fitguard.detector`; the contract, presets,
labels and preprocessing need numpy and Pillow only. The client lives in :mod:`fitguard.client`, export
in :mod:`fitguard.export`.
"""

__version__ = "0.1.0"
