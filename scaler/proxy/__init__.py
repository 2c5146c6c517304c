"""The training proxy: a short, seeded training run that gives a candidate's mIoU, and the data it reads.

``data/`` holds one module per dataset layout; ``augment`` the fixed augmentation stream; ``train``
the recipe and the loop; ``metrics`` the evaluation and the scores.
"""
