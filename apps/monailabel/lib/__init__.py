"""Task classes of the MONAI Label app (imported by main.py as ``lib``)."""
