"""Code that ``medgen zoo-export`` copies into an exported bundle's ``scripts/`` (with medgen's other modules it uses).

Everything here imports only MONAI, torch, numpy, Pillow, tqdm and the medgen modules that are copied along, so the
exported bundle runs with MONAI and the packages its metadata lists.
"""
