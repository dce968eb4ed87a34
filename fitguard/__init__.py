"""fitguard: refuse inputs an image classifier is not fit to judge.

The core here (tensor contract, presets, labels, preprocessing) needs numpy and Pillow only; the client
lives in :mod:`fitguard.client`, models and export in :mod:`fitguard.models` / :mod:`fitguard.export`.
"""

__version__ = "0.1.0"
