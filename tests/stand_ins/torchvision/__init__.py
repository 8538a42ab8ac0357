"""Stand-in for torchvision where no build matching the installed torch loads (see tests/test_monailabel.py).

``monailabel.transform.post`` imports ``make_grid`` and ``save_image`` at import time and uses them only
for image grids; the classification path never calls them.
"""
